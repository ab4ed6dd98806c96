// A virtualised table: however many rows there are, only those in view (and a few
// beyond) exist in the page, so a list of 10,000 pods scrolls and updates as one of ten.

const ROW = 28;
const OVERSCAN = 10;

export class Table {
  // columns: [{ title, width, value(object) -> string }]
  constructor(parent, columns, onSelect) {
    this.columns = columns;
    this.onSelect = onSelect;
    this.items = [];
    this.root = element("div", "table");
    const head = element("div", "row head");
    for (const c of columns) head.append(cell(c, c.title));
    this.viewport = element("div", "viewport");
    this.spacer = element("div", "spacer");
    this.viewport.append(this.spacer);
    this.root.append(head, this.viewport);
    parent.append(this.root);
    this.viewport.addEventListener("scroll", () => this.draw());
    new ResizeObserver(() => this.draw()).observe(this.viewport);
  }

  show(items) {
    this.items = items;
    this.spacer.style.height = `${items.length * ROW}px`;
    this.draw();
  }

  draw() {
    const first = Math.max(0, Math.floor(this.viewport.scrollTop / ROW) - OVERSCAN);
    const last = Math.min(this.items.length, Math.ceil((this.viewport.scrollTop + this.viewport.clientHeight) / ROW) + OVERSCAN);
    const rows = [];
    for (let i = first; i < last; i++) {
      const o = this.items[i];
      const row = element("div", "row");
      row.style.top = `${i * ROW}px`;
      row.dataset.name = o.metadata.name;
      for (const c of this.columns) row.append(cell(c, c.value(o)));
      row.addEventListener("click", () => this.onSelect(o));
      rows.push(row);
    }
    this.spacer.replaceChildren(...rows);
  }
}

function cell(column, text) {
  const c = element("span", "cell");
  c.style.width = column.width;
  c.textContent = text ?? "";
  c.title = c.textContent;
  return c;
}

export function element(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}
