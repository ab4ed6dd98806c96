// The dashboard: sign in with a token, pick a kind in the menu, and its objects are listed
// and followed live; a row opens its detail, where a person can act on it.

import { Api, ApiError } from "./api.js";
import { Collection } from "./collection.js";
import { Table, element } from "./table.js";
import { RESOURCES, listPath, objectPath, nodeUse } from "./resources.js";

const $ = id => document.getElementById(id);
const TOKEN = "skiff.token";

// When the current list started, showed its first rows, had every page and showed them
// all (performance.now() ms): read by the end-to-end tests and the dashboard bench.
window.skiffTimings = {};

let api;
let view = null;
let detail = null;

async function start() {
  const token = localStorage.getItem(TOKEN);
  if (!token) return showLogin("");
  api = new Api(token);
  try {
    const review = await api.send("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
      { apiVersion: "authentication.k8s.io/v1", kind: "SelfSubjectReview" });
    $("who").textContent = review.status.userInfo.username;
  } catch (e) {
    localStorage.removeItem(TOKEN);
    return showLogin(e.code === 401 ? "The server refused this token (401 Unauthorized)." : e.message);
  }
  $("login").hidden = true;
  $("app").hidden = false;
  buildNav();
  followNamespaces();
  route();
}

function showLogin(message) {
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
}

$("login").addEventListener("submit", event => {
  event.preventDefault();
  localStorage.setItem(TOKEN, $("token").value.trim());
  start();
});
$("signout").addEventListener("click", () => {
  localStorage.removeItem(TOKEN);
  location.reload();
});

function buildNav() {
  $("nav").replaceChildren(...Object.entries(RESOURCES).map(([name, r]) => {
    const a = element("a", "", `${r.kind}s`.replace(/sss$/, "sses"));
    a.dataset.resource = name;
    a.href = `#/${name}`;
    return a;
  }));
}

// The namespace menu, kept current; a token that may not list namespaces keeps "all".
function followNamespaces() {
  const namespaces = new Collection(() => {
    const select = $("namespace");
    const chosen = select.value;
    const names = namespaces.items().map(n => n.metadata.name);
    select.replaceChildren(element("option", "", "all namespaces"), ...names.map(n => element("option", "", n)));
    select.options[0].value = "";
    select.value = names.includes(chosen) ? chosen : "";
  });
  api.follow("/api/v1/namespaces", {
    onReset: () => namespaces.reset(), onPage: items => namespaces.add(items),
    onEvent: (type, o) => namespaces.apply(type, o), signal: new AbortController().signal,
  }).catch(() => {});
}

$("namespace").addEventListener("change", () => {
  location.hash = `#/${view?.name || "pods"}/${$("namespace").value}`;
});
$("filter").addEventListener("input", () => view?.redraw());
window.addEventListener("hashchange", route);

// #/RESOURCE[/NAMESPACE]
function route() {
  const [, name = "pods", namespace = ""] = location.hash.split("/");
  const r = RESOURCES[name] ? name : "pods";
  // A namespace is a DNS label; anything else in the address means all namespaces.
  const ns = decodeURIComponent(namespace);
  show(r, /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(ns) ? ns : "");
}

function show(name, namespace) {
  view?.abort.abort();
  closeDetail();
  const r = RESOURCES[name];
  for (const a of $("nav").children) a.classList.toggle("current", a.dataset.resource === name);
  $("namespace").value = namespace;
  $("title").textContent = $("nav").querySelector(`[data-resource=${name}]`).textContent;
  const abort = new AbortController();
  const timings = window.skiffTimings = { view: name, start: performance.now() };
  const table = new Table($("list"), r.columns, o => openDetail(r, o));
  $("list").replaceChildren(table.root);
  const collection = new Collection(() => redraw());
  const redraw = () => {
    const filter = $("filter").value.trim();
    const items = filter ? collection.items().filter(o => o.metadata.name.includes(filter)) : collection.items();
    table.show(items);
    $("count").textContent = `${items.length}`;
    if (items.length && !timings.firstRows) timings.firstRows = performance.now();
    if (timings.listed && !timings.shown) timings.shown = performance.now();
    if (detail?.key) detail.refresh(collection.get(detail.key));
  };
  view = { name, abort, redraw };
  api.follow(listPath(r, namespace), {
    onReset: () => collection.reset(),
    onPage: items => collection.add(items),
    onListed: () => { timings.listed ??= performance.now(); },
    onEvent: (type, o) => collection.apply(type, o),
    signal: abort.signal,
  }).catch(e => { $("count").textContent = e.message; });
  if (name === "nodes") pollNodeUse(abort.signal, redraw);
}

async function pollNodeUse(signal, redraw) {
  while (!signal.aborted) {
    try {
      const metrics = await api.json("/apis/metrics.k8s.io/v1beta1/nodes", { signal });
      for (const m of metrics.items) nodeUse.set(m.metadata.name, m.usage);
      redraw();
    } catch { /* no metrics yet: the column shows "-" */ }
    await new Promise(resolve => setTimeout(resolve, 10000));
  }
}

function closeDetail() {
  detail?.abort.abort();
  detail = null;
  $("detail").hidden = true;
}

// The detail of one object: its actions, its YAML to edit, and (by kind) its logs or
// endpoints, followed live.
function openDetail(r, o) {
  closeDetail();
  const abort = new AbortController();
  const aside = $("detail");
  const path = objectPath(r, o);
  const status = element("p", "ok");
  const error = element("p", "error");
  error.setAttribute("role", "alert");
  error.id = "detail-error";
  const report = (e, done) => {
    error.textContent = e ? describe(e) : "";
    status.textContent = e ? "" : done;
  };
  const act = async (work, done) => {
    try { await work(); report(null, done); } catch (e) { report(e); }
  };
  const actions = element("div", "actions");
  const close = element("button", "", "Close");
  close.addEventListener("click", closeDetail);
  actions.append(close);
  const sections = [];
  let replicas = null;
  for (const action of r.actions) {
    if (action === "scale") {
      replicas = element("input");
      replicas.type = "number";
      replicas.min = "0";
      replicas.id = "replicas";
      replicas.value = o.spec.replicas ?? 1;
      const scale = element("button", "", "Scale");
      scale.addEventListener("click", () => act(
        () => api.send("PATCH", `${path}/scale`, { spec: { replicas: Number(replicas.value) } }, "application/merge-patch+json"),
        `Scaled to ${replicas.value}.`));
      actions.append(replicas, scale);
    } else if (action === "restart") {
      const restart = element("button", "", "Restart");
      const patch = () => ({ spec: { template: { metadata: { annotations: { "kubectl.kubernetes.io/restartedAt": new Date().toISOString() } } } } });
      restart.addEventListener("click", () => act(() => api.send("PATCH", path, patch(), "application/strategic-merge-patch+json"), "Restarting."));
      actions.append(restart);
    } else if (action === "delete") {
      const remove = element("button", "", "Delete");
      remove.addEventListener("click", () => {
        if (remove.textContent === "Delete") { remove.textContent = "Confirm delete"; return; }
        act(() => api.fetch("DELETE", path), "Deleted.");
      });
      actions.append(remove);
    } else if (action === "edit") {
      sections.push(yamlEditor(path, act));
    } else if (action === "logs") {
      sections.push(logs(path, o, abort.signal));
    } else if (action === "endpoints") {
      sections.push(endpoints(o, abort.signal));
    }
  }
  aside.replaceChildren(element("h3", "", `${r.kind} ${o.metadata.namespace ? `${o.metadata.namespace}/` : ""}${o.metadata.name}`),
    actions, error, status, ...sections);
  aside.hidden = false;
  detail = {
    key: Collection.key(o), abort,
    // A newer copy from the watch: the replicas shown follow it unless being edited.
    refresh: current => {
      if (!current) { status.textContent = "This object is gone."; return; }
      if (replicas && document.activeElement !== replicas) replicas.value = current.spec.replicas ?? 1;
    },
  };
}

function yamlEditor(path, act) {
  const section = element("section");
  const text = element("textarea");
  text.id = "yaml";
  text.spellcheck = false;
  const load = async () => { text.value = await api.text(path, "application/yaml"); };
  const save = element("button", "", "Save");
  save.id = "save";
  save.addEventListener("click", () => act(async () => { await api.send("PUT", `${path}?fieldValidation=Strict`, text.value, "application/yaml"); await load(); }, "Saved."));
  const reload = element("button", "", "Reload");
  reload.addEventListener("click", () => act(load, ""));
  const bar = element("div", "actions");
  bar.append(element("strong", "", "YAML"), save, reload);
  section.append(bar, text);
  load().catch(e => { text.value = describe(e); });
  return section;
}

function logs(path, pod, signal) {
  const section = element("section");
  const select = element("select");
  for (const c of [...(pod.spec.initContainers || []), ...pod.spec.containers]) select.append(element("option", "", c.name));
  select.value = pod.spec.containers[0].name;
  const out = element("pre", "log");
  out.id = "log";
  let current = null;
  const stream = () => {
    current?.abort();
    current = new AbortController();
    signal.addEventListener("abort", () => current.abort(), { once: true });
    out.textContent = "";
    api.lines(`${path}/log?follow=true&tailLines=1000&container=${encodeURIComponent(select.value)}`, line => {
      const atEnd = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
      out.append(`${line}\n`);
      if (out.childNodes.length > 5000) out.firstChild.remove();
      if (atEnd) out.scrollTop = out.scrollHeight;
    }, current.signal).catch(e => { if (!current.signal.aborted) out.append(`[${describe(e)}]\n`); });
  };
  select.addEventListener("change", stream);
  const bar = element("div", "actions");
  bar.append(element("strong", "", "Logs"), select);
  section.append(bar, out);
  stream();
  return section;
}

function endpoints(service, signal) {
  const section = element("section");
  const list = element("ul");
  list.id = "endpoints";
  const slices = new Collection(() => {
    const rows = slices.items().flatMap(s => (s.endpoints || []).flatMap(e => (e.addresses || []).map(ip => {
      const ports = (s.ports || []).map(p => `${ip}:${p.port}`).join(", ") || ip;
      const pod = e.targetRef?.name ? ` ${e.targetRef.name}` : "";
      return element("li", "", `${ports}${pod}${e.conditions?.ready === false ? " (not ready)" : ""}`);
    })));
    list.replaceChildren(...(rows.length ? rows : [element("li", "", "no endpoints")]));
  });
  const selector = encodeURIComponent(`kubernetes.io/service-name=${service.metadata.name}`);
  api.follow(`/apis/discovery.k8s.io/v1/namespaces/${service.metadata.namespace}/endpointslices?labelSelector=${selector}`, {
    onReset: () => slices.reset(), onPage: items => slices.add(items),
    onEvent: (type, o) => slices.apply(type, o), signal,
  }).catch(e => list.replaceChildren(element("li", "error", describe(e))));
  section.append(element("strong", "", "Endpoints"), list);
  return section;
}

// An error as the server put it: its Status message and the fields it names.
function describe(e) {
  if (!(e instanceof ApiError)) return String(e.message || e);
  const causes = e.status.details?.causes || [];
  return [e.status.message, ...causes.filter(c => !e.status.message?.includes(c.message)).map(c => `${c.field}: ${c.message}`)].join("\n");
}

start();
