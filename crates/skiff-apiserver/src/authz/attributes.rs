//! What a request asks to do, read from its method, path and query as kube-apiserver's
//! RequestInfo reads them: a verb, and either a resource (group, resource, subresource,
//! namespace, name) or a non-resource path (`/apis`, `/version`).

use http::Method;

/// The authorizer's view of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    /// False for paths that name no resource (discovery, `/version`, OpenAPI).
    pub resource_request: bool,
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub path: String,
}

/// Subresources of a namespace, addressed as `namespaces/NAME/SUB`.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];
/// Subresources whose every request is a `create`, even the WebSocket ones that arrive
/// as GET (Kubernetes authorizes them so since 1.30).
const STREAMING_SUBRESOURCES: [&str; 3] = ["exec", "attach", "portforward"];

impl Attributes {
    /// Reads a request's attributes.
    pub fn of(method: &Method, path: &str, query: Option<&str>) -> Attributes {
        let mut a = Attributes { path: path.to_string(), ..Default::default() };
        let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
        let (group, rest) = match segments.as_slice() {
            ["api", _version, rest @ ..] if !rest.is_empty() => ("", rest),
            ["apis", group, _version, rest @ ..] if !rest.is_empty() => (*group, rest),
            _ => {
                a.verb = match *method {
                    Method::GET | Method::HEAD => "get",
                    Method::POST => "post",
                    Method::PUT => "put",
                    Method::PATCH => "patch",
                    Method::DELETE => "delete",
                    _ => "",
                }
                .to_string();
                return a;
            }
        };
        a.resource_request = true;
        a.api_group = group.to_string();
        let mut parts = rest;
        if parts[0] == "namespaces" && parts.len() > 1 {
            a.namespace = parts[1].to_string();
            if parts.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&parts[2]) {
                parts = &parts[2..];
            }
        }
        a.resource = parts[0].to_string();
        a.name = parts.get(1).map(|s| s.to_string()).unwrap_or_default();
        a.subresource = parts.get(2).map(|s| s.to_string()).unwrap_or_default();
        let watching = query.is_some_and(|q| q.split('&').any(|kv| matches!(kv, "watch=true" | "watch=1")));
        a.verb = match *method {
            _ if STREAMING_SUBRESOURCES.contains(&a.subresource.as_str()) => "create",
            Method::GET | Method::HEAD if watching => "watch",
            Method::GET | Method::HEAD if a.name.is_empty() => "list",
            Method::GET | Method::HEAD => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if a.name.is_empty() => "deletecollection",
            Method::DELETE => "delete",
            _ => "",
        }
        .to_string();
        if matches!(a.verb.as_str(), "list" | "watch") {
            a.name = query.and_then(selected_name).unwrap_or_default();
        }
        a
    }

    /// `resource` or `resource/subresource`, as RBAC rules name it.
    pub fn combined_resource(&self) -> String {
        if self.subresource.is_empty() { self.resource.clone() } else { format!("{}/{}", self.resource, self.subresource) }
    }

    /// Kubernetes' refusal: `pods "web" is forbidden: User "alice" cannot delete resource
    /// "pods" in API group "" in the namespace "shop"`.
    pub fn forbidden_message(&self, user: &str) -> String {
        if !self.resource_request {
            return format!("forbidden: User {user:?} cannot {} path {:?}", self.verb, self.path);
        }
        let what = format!("User {user:?} cannot {} resource {:?} in API group {:?}", self.verb, self.combined_resource(), self.api_group);
        let scope = if self.namespace.is_empty() { " at the cluster scope".to_string() } else { format!(" in the namespace {:?}", self.namespace) };
        let qualified = if self.api_group.is_empty() { self.resource.clone() } else { format!("{}.{}", self.resource, self.api_group) };
        let subject = if self.name.is_empty() { qualified } else { format!("{qualified} {:?}", self.name) };
        format!("{subject} is forbidden: {what}{scope}")
    }
}

/// The one name a list or watch selects with `fieldSelector=metadata.name=NAME` (as
/// kubelet watches each Secret it uses): its request is for that object, as
/// kube-apiserver's RequestInfo reads it, so a rule with resourceNames or the Node
/// authorizer can allow it.
fn selected_name(query: &str) -> Option<String> {
    let raw = query.split('&').find_map(|kv| kv.strip_prefix("fieldSelector="))?;
    let raw = raw.replace('+', " ");
    let selector = percent_encoding::percent_decode_str(&raw).decode_utf8().ok()?;
    let value = selector.strip_prefix("metadata.name==").or_else(|| selector.strip_prefix("metadata.name="))?;
    (!value.is_empty() && !value.contains([',', '=', '!'])).then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(method: Method, path: &str, query: Option<&str>) -> Attributes {
        Attributes::of(&method, path, query)
    }

    #[test]
    fn verbs_and_resources_are_read_as_kubernetes_reads_them() {
        let a = of(Method::GET, "/api/v1/namespaces/shop/pods", None);
        assert_eq!((a.verb.as_str(), a.resource.as_str(), a.namespace.as_str(), a.name.as_str()), ("list", "pods", "shop", ""));
        assert_eq!(of(Method::GET, "/api/v1/namespaces/shop/pods", Some("watch=true&resourceVersion=3")).verb, "watch");
        let a = of(Method::DELETE, "/apis/apps/v1/namespaces/shop/deployments/web", None);
        assert_eq!((a.verb.as_str(), a.api_group.as_str(), a.name.as_str()), ("delete", "apps", "web"));
        assert_eq!(of(Method::DELETE, "/api/v1/namespaces/shop/pods", None).verb, "deletecollection");
        let a = of(Method::PUT, "/apis/apps/v1/namespaces/shop/deployments/web/scale", None);
        assert_eq!((a.verb.as_str(), a.combined_resource().as_str()), ("update", "deployments/scale"));
        // A namespace is its own resource, with its own subresources.
        let a = of(Method::GET, "/api/v1/namespaces/shop", None);
        assert_eq!((a.verb.as_str(), a.resource.as_str(), a.name.as_str(), a.namespace.as_str()), ("get", "namespaces", "shop", "shop"));
        assert_eq!(of(Method::PUT, "/api/v1/namespaces/shop/finalize", None).combined_resource(), "namespaces/finalize");
        assert_eq!(of(Method::GET, "/api/v1/nodes", None).namespace, "");
        // exec over WebSocket arrives as GET and is a create.
        assert_eq!(of(Method::GET, "/api/v1/namespaces/shop/pods/web/exec", Some("command=ls")).verb, "create");
        // A list or watch of one object by name is a request for that object.
        let a = of(Method::GET, "/api/v1/namespaces/shop/secrets", Some("fieldSelector=metadata.name%3Dtls&watch=true"));
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("watch", "tls"));
        assert_eq!(of(Method::GET, "/api/v1/namespaces/shop/secrets", Some("fieldSelector=metadata.name%3Dtls%2Ctype%3Dx")).name, "");
        let a = of(Method::GET, "/apis/apps/v1", None);
        assert!(!a.resource_request && a.verb == "get" && a.path == "/apis/apps/v1");
    }

    #[test]
    fn refusals_read_as_kubernetes_writes_them() {
        let user = "system:serviceaccount:shop:reader";
        assert_eq!(of(Method::DELETE, "/api/v1/namespaces/shop/pods/web", None).forbidden_message(user),
            r#"pods "web" is forbidden: User "system:serviceaccount:shop:reader" cannot delete resource "pods" in API group "" in the namespace "shop""#);
        assert_eq!(of(Method::GET, "/apis/apps/v1/deployments", None).forbidden_message("alice"),
            r#"deployments.apps is forbidden: User "alice" cannot list resource "deployments" in API group "apps" at the cluster scope"#);
        assert_eq!(of(Method::GET, "/apis", None).forbidden_message("alice"), r#"forbidden: User "alice" cannot get path "/apis""#);
    }
}
