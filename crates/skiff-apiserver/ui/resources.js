// What the dashboard shows of each kind: where it lives in the API, its columns (as
// `kubectl get` prints them), and the actions it offers.

export function age(timestamp) {
  if (!timestamp) return "";
  const s = Math.max(0, Math.floor((Date.now() - Date.parse(timestamp)) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

const NAMESPACE = { title: "Namespace", width: "12%", value: o => o.metadata.namespace };
const NAME = { title: "Name", width: "24%", value: o => o.metadata.name };
const AGE = { title: "Age", width: "7%", value: o => age(o.metadata.creationTimestamp) };
const column = (title, width, value) => ({ title, width, value });

// A pod's status as kubectl prints it: a container's waiting or terminated reason
// before the phase.
export function podStatus(p) {
  if (p.metadata.deletionTimestamp) return "Terminating";
  for (const c of p.status?.containerStatuses || []) {
    if (c.state?.waiting?.reason) return c.state.waiting.reason;
    if (c.state?.terminated?.reason && p.status.phase === "Running") return c.state.terminated.reason;
  }
  return p.status?.reason || p.status?.phase || "Pending";
}

// Wasm or container: the runtime the node reports (the scheme of the container's ID,
// its RuntimeClass handler), else the RuntimeClass asked for.
export function podRuntime(p) {
  const id = p.status?.containerStatuses?.find(c => c.containerID)?.containerID;
  const handler = id ? id.split("://")[0] : p.spec.runtimeClassName;
  if (!handler) return "";
  return handler === "wasmtime" ? `wasm (${handler})` : `container (${handler})`;
}

const ready = p => {
  const all = p.status?.containerStatuses || [];
  return `${all.filter(c => c.ready).length}/${p.spec.containers.length}`;
};
const restarts = p => String((p.status?.containerStatuses || []).reduce((n, c) => n + (c.restartCount || 0), 0));
const condition = (o, type) => o.status?.conditions?.find(c => c.type === type)?.status;

// Node use, from metrics.k8s.io, refreshed by the nodes view.
export const nodeUse = new Map();

export const RESOURCES = {
  namespaces: { kind: "Namespace", base: "/api/v1", plural: "namespaces", cluster: true,
    columns: [NAME, column("Status", "12%", o => o.status?.phase), AGE], actions: ["edit", "delete"] },
  deployments: { kind: "Deployment", base: "/apis/apps/v1", plural: "deployments",
    columns: [NAMESPACE, NAME, column("Ready", "8%", o => `${o.status?.readyReplicas || 0}/${o.spec.replicas ?? 1}`),
      column("Up-to-date", "9%", o => String(o.status?.updatedReplicas || 0)), column("Available", "9%", o => String(o.status?.availableReplicas || 0)), AGE],
    actions: ["scale", "restart", "edit", "delete"] },
  statefulsets: { kind: "StatefulSet", base: "/apis/apps/v1", plural: "statefulsets",
    columns: [NAMESPACE, NAME, column("Ready", "8%", o => `${o.status?.readyReplicas || 0}/${o.spec.replicas ?? 1}`), AGE],
    actions: ["scale", "restart", "edit", "delete"] },
  daemonsets: { kind: "DaemonSet", base: "/apis/apps/v1", plural: "daemonsets",
    columns: [NAMESPACE, NAME, column("Desired", "8%", o => String(o.status?.desiredNumberScheduled || 0)),
      column("Ready", "8%", o => String(o.status?.numberReady || 0)), column("Available", "9%", o => String(o.status?.numberAvailable || 0)), AGE],
    actions: ["restart", "edit", "delete"] },
  jobs: { kind: "Job", base: "/apis/batch/v1", plural: "jobs",
    columns: [NAMESPACE, NAME, column("Status", "10%", o => condition(o, "Complete") === "True" ? "Complete" : condition(o, "Failed") === "True" ? "Failed" : "Running"),
      column("Completions", "10%", o => `${o.status?.succeeded || 0}/${o.spec.completions ?? 1}`), AGE],
    actions: ["edit", "delete"] },
  cronjobs: { kind: "CronJob", base: "/apis/batch/v1", plural: "cronjobs",
    columns: [NAMESPACE, NAME, column("Schedule", "12%", o => o.spec.schedule), column("Suspend", "8%", o => String(!!o.spec.suspend)),
      column("Active", "7%", o => String(o.status?.active?.length || 0)), column("Last schedule", "11%", o => age(o.status?.lastScheduleTime)), AGE],
    actions: ["edit", "delete"] },
  pods: { kind: "Pod", base: "/api/v1", plural: "pods",
    columns: [NAMESPACE, NAME, column("Ready", "6%", ready), column("Status", "12%", podStatus), column("Restarts", "7%", restarts),
      column("Node", "12%", o => o.spec.nodeName), column("Runtime", "12%", podRuntime), AGE],
    actions: ["logs", "edit", "delete"] },
  services: { kind: "Service", base: "/api/v1", plural: "services",
    columns: [NAMESPACE, NAME, column("Type", "10%", o => o.spec.type), column("Cluster-IP", "12%", o => o.spec.clusterIP),
      column("Ports", "16%", o => (o.spec.ports || []).map(p => `${p.port}/${p.protocol || "TCP"}`).join(",")), AGE],
    actions: ["endpoints", "edit", "delete"] },
  ingresses: { kind: "Ingress", base: "/apis/networking.k8s.io/v1", plural: "ingresses",
    columns: [NAMESPACE, NAME, column("Class", "10%", o => o.spec.ingressClassName),
      column("Hosts", "20%", o => (o.spec.rules || []).map(r => r.host || "*").join(",")),
      column("Address", "12%", o => (o.status?.loadBalancer?.ingress || []).map(i => i.ip || i.hostname).join(",")), AGE],
    actions: ["edit", "delete"] },
  events: { kind: "Event", base: "/api/v1", plural: "events",
    columns: [NAMESPACE, column("Last seen", "7%", o => age(o.lastTimestamp || o.eventTime || o.metadata.creationTimestamp)),
      column("Type", "7%", o => o.type), column("Reason", "11%", o => o.reason),
      column("Object", "18%", o => `${(o.involvedObject?.kind || "").toLowerCase()}/${o.involvedObject?.name || ""}`), column("Message", "45%", o => o.message)],
    actions: [] },
  nodes: { kind: "Node", base: "/api/v1", plural: "nodes", cluster: true,
    columns: [NAME, column("Status", "8%", o => condition(o, "Ready") === "True" ? "Ready" : "NotReady"),
      column("Runtimes", "14%", o => Object.keys(o.metadata.labels || {}).filter(l => l.startsWith("skiff.dev/runtime-")).map(l => l.slice(18)).join(",")),
      column("CPU use / capacity", "15%", o => `${nodeUse.get(o.metadata.name)?.cpu || "-"} / ${o.status?.capacity?.cpu || ""}`),
      column("Memory use / capacity", "18%", o => `${nodeUse.get(o.metadata.name)?.memory || "-"} / ${o.status?.capacity?.memory || ""}`),
      column("Pods", "6%", o => o.status?.capacity?.pods), AGE],
    actions: ["edit"] },
};

// The collection's path: all namespaces, or one.
// (Names are encoded: the namespace comes from the page's address, which anyone can write.)
export function listPath(r, namespace) {
  return !r.cluster && namespace ? `${r.base}/namespaces/${encodeURIComponent(namespace)}/${r.plural}` : `${r.base}/${r.plural}`;
}

export function objectPath(r, o) {
  return `${listPath(r, o.metadata.namespace)}/${encodeURIComponent(o.metadata.name)}`;
}
