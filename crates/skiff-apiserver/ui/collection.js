// The objects of one followed list, kept by namespace/name and sorted on demand; the
// views it feeds redraw at most once a frame however many events arrive.

export class Collection {
  constructor(onChange) {
    this.objects = new Map();
    this.sorted = null;
    this.onChange = onChange;
    this.frame = 0;
  }

  static key(o) {
    return `${o.metadata.namespace || ""}/${o.metadata.name}`;
  }

  reset() {
    this.objects.clear();
    this.changed();
  }

  add(items) {
    for (const o of items) this.objects.set(Collection.key(o), slim(o));
    this.changed();
  }

  apply(type, o) {
    if (type === "DELETED") this.objects.delete(Collection.key(o));
    else this.objects.set(Collection.key(o), slim(o));
    this.changed();
  }

  get(key) {
    return this.objects.get(key);
  }

  get size() {
    return this.objects.size;
  }

  // The objects by namespace then name, as kubectl lists them.
  items() {
    if (!this.sorted) this.sorted = [...this.objects.keys()].sort().map(k => this.objects.get(k));
    return this.sorted;
  }

  changed() {
    this.sorted = null;
    if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = 0; this.onChange(); });
  }
}

// Lists show nothing of managedFields, often the larger part of an object: not kept, so a
// list of 10,000 pods holds less memory. (The YAML editor reads the whole object.)
function slim(o) {
  delete o.metadata.managedFields;
  return o;
}
