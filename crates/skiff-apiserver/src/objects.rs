//! The write pipeline every object goes through, from a request or from the server's own
//! bootstrap: metadata, the kind's strategy, defaulting, typed decoding, validation, field
//! ownership, allocation, storage. Deletion and binding: `deletion`.

use serde_json::{Map, Value, json};
use skiff_core::{ResourceType, meta, resources};
use skiff_store::{ListOptions, StoreError, object_revision};

use crate::error::{ApiError, ApiResult};
use crate::request::qualified;
use crate::field_manager::{self, Owner};
use crate::{ApiServer, convert, defaults, pod_security, services, strategy, typed, validation};

/// How to treat fields the type does not know (`?fieldValidation=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(value: Option<&str>) -> ApiResult<Self> {
        match value.unwrap_or("Warn") {
            "Ignore" | "" => Ok(Self::Ignore),
            "Warn" => Ok(Self::Warn),
            "Strict" => Ok(Self::Strict),
            other => Err(ApiError::bad_request(format!("fieldValidation must be Ignore, Warn or Strict, not {other:?}"))),
        }
    }
}

/// Options common to writes.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub field_validation: FieldValidation,
    pub dry_run: bool,
    /// Whose fields the write sets (`metadata.managedFields`).
    pub owner: Owner,
    /// The user asking, where admission depends on who asks (a node's own objects, a
    /// certificate request's requester); none for the server's own writes.
    pub requester: Option<crate::authz::UserInfo>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self { field_validation: FieldValidation::Strict, dry_run: false, owner: Owner::Update("skiff-apiserver".into()), requester: None }
    }
}

/// How often a read-modify-write (an update, a patch, an apply, a deletion) is tried
/// again after losing a race to another write.
pub const CONFLICT_RETRIES: usize = 8;

/// The result of a write: the object, any warnings for the `Warning` header, and what
/// admission adds to the request's audit event.
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
    pub audit: Vec<(&'static str, String)>,
}

pub fn now() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).map(|t| t.to_string()).unwrap_or_default()
}

const NAME_SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

pub(crate) fn generated_name(prefix: &str) -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let suffix: String = bytes[..5].iter().map(|b| NAME_SUFFIX_ALPHABET[*b as usize % NAME_SUFFIX_ALPHABET.len()] as char).collect();
    format!("{prefix}{suffix}")
}

/// True for kinds whose spec changes bump `metadata.generation`.
fn has_generation(object: &Value) -> bool {
    object.get("spec").is_some()
}

/// Checks `apiVersion`/`kind` of a body against the resource it was sent to (filling
/// them in when absent).
pub fn check_kind(r: &ResourceType, object: &mut Value) -> ApiResult<()> {
    let Some(map) = object.as_object_mut() else {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    };
    let expected = r.api_version();
    match map.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("apiVersion".into(), json!(expected));
        }
        Some(v) if v != expected => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({expected})"
            )));
        }
        _ => {}
    }
    match map.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("kind".into(), json!(r.kind));
        }
        Some(k) if k != r.kind => {
            return Err(ApiError::bad_request(format!("the kind in the data ({k}) does not match the expected kind ({}) for {}", r.kind, qualified(r))));
        }
        _ => {}
    }
    Ok(())
}

/// Decodes the stored form through its type; unknown fields per `validation`.
fn normalise(r: &ResourceType, object: Value, validation: FieldValidation, warnings: &mut Vec<String>) -> ApiResult<Value> {
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let normalised = typed::normalise(api_version, r.kind, &object)
        .map_err(|e| ApiError::bad_request(format!("{} in version \"{}\" cannot be handled as a {}: {e}", r.kind, r.version, r.kind)))?;
    let Some(normalised) = normalised else { return Ok(object) };
    if validation != FieldValidation::Ignore {
        let unknown = typed::unknown_fields(&object, &normalised);
        if !unknown.is_empty() {
            let msgs: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
            if validation == FieldValidation::Strict {
                return Err(ApiError::bad_request(format!("strict decoding error: {}", msgs.join(", "))));
            }
            warnings.extend(msgs);
        }
    }
    Ok(normalised)
}

fn validate(r: &ResourceType, object: &Value) -> ApiResult<()> {
    let errs = validation::validate(r.kind, object);
    if errs.is_empty() {
        return Ok(());
    }
    let name = meta::name(object).unwrap_or_default();
    Err(ApiError::invalid(r.kind, r.group, name, errs))
}

fn store_err<'a>(r: &'a ResourceType, name: &'a str) -> impl Fn(StoreError) -> ApiError + 'a {
    move |e| ApiError::from_store(e, &qualified(r), name)
}

impl ApiServer {
    async fn allocate_service(&self, old: Option<&Value>, object: &mut Value) -> ApiResult<()> {
        if let Some(old) = old {
            // Allocated values carry over when an update leaves them out, as in Kubernetes.
            for field in ["clusterIP", "clusterIPs"] {
                if object.pointer(&format!("/spec/{field}")).is_none_or(|v| v.is_null() || v == "")
                    && let Some(v) = old.pointer(&format!("/spec/{field}"))
                {
                    object["spec"][field] = v.clone();
                }
            }
            let old_ip = old.pointer("/spec/clusterIP");
            if old_ip.is_some() && object.pointer("/spec/clusterIP") != old_ip && object.pointer("/spec/type") != Some(&json!("ExternalName")) {
                let name = meta::name(object).unwrap_or_default();
                return Err(ApiError::invalid("Service", "", name, vec![crate::error::FieldError::invalid(
                    "spec.clusterIPs[0]", object.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or_default(), "may not change once set")]));
            }
        }
        let services = resources::find("", "v1", "services").expect("services");
        let live = self.store.list(&services.list_prefix(None), &ListOptions::default()).await.map_err(|e| ApiError::internal(e.to_string()))?;
        let own_key = services.key(meta::namespace(object), meta::name(object).unwrap_or_default());
        let others: Vec<&Value> = live.items.iter().filter(|s| services.key(meta::namespace(s), meta::name(s).unwrap_or_default()) != own_key).collect();
        let in_use = services::InUse::from_services(others.into_iter());
        let Some(spec) = object.get_mut("spec") else { return Ok(()) };
        services::allocate(spec, self.config.service_cidr, self.config.node_port_range, &in_use).map_err(|errs| {
            let name = meta::name(object).unwrap_or_default().to_string();
            ApiError::invalid("Service", "", &name, errs)
        })
    }

    /// Creates an object received at resource `r` in `namespace`; returns its stored form.
    pub async fn create_object(&self, r: &'static ResourceType, namespace: Option<&str>, mut object: Value, opts: WriteOptions) -> ApiResult<Written> {
        check_kind(r, &mut object)?;
        let mut object = convert::to_storage(r, object);
        let mut warnings = Vec::new();
        let meta = meta::metadata_mut(&mut object);
        if meta.get("resourceVersion").and_then(Value::as_str).is_some_and(|v| !v.is_empty()) {
            return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
        }
        if r.namespaced {
            let ns = namespace.ok_or_else(|| ApiError::bad_request(format!("{} must be created in a namespace", qualified(r))))?;
            match meta.get("namespace").and_then(Value::as_str) {
                Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                    return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
                }
                _ => {
                    meta.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            meta.remove("namespace");
        }
        // The prefix a name is generated from, when the object names none.
        let generate = match meta.get("name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => String::new(),
            _ => meta.get("generateName").and_then(Value::as_str).unwrap_or_default().to_string(),
        };
        if !generate.is_empty() {
            meta.insert("name".into(), json!(generated_name(&generate)));
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now()));
        for gone in ["deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] {
            meta.remove(gone);
        }
        // Only an apply brings its own managedFields (computed for it); a create's are
        // recorded below.
        if opts.owner != Owner::Applied {
            meta.remove("managedFields");
        }
        if has_generation(&object) {
            meta::metadata_mut(&mut object).insert("generation".into(), json!(1));
        }
        strategy::of(r.kind).prepare_create(r, &mut object);
        defaults::apply(r.kind, &mut object);
        let mut object = normalise(r, object, opts.field_validation, &mut warnings)?;
        validate(r, &object)?;
        if let Owner::Update(manager) = &opts.owner {
            field_manager::record_update(None, &mut object, manager, None, r.has_subresource("status"), &now());
        }
        let name = meta::name(&object).unwrap_or_default().to_string();
        if let Some(user) = &opts.requester {
            crate::authz::node::admit_create(user, r.kind, &object)?;
        }
        if r.kind == "CertificateSigningRequest" {
            let user = opts.requester.as_ref().ok_or_else(|| ApiError::forbidden("a CertificateSigningRequest is made by a user"))?;
            crate::certificate_requests::admit_create(user, &mut object)?;
        }
        let mut audit = Vec::new();
        if let Some(ns) = namespace.filter(|_| r.namespaced) {
            let labels = self.namespaces.check(&*self.store, ns).await?;
            if r.group.is_empty() && r.kind == "Pod" {
                crate::service_accounts::admit_pod(self, ns, &mut object).await?;
                crate::limit_ranger::admit_pod(self, ns, &name, &mut object).await?;
            }
            let verdict = self.pod_security(r, &labels, &name, &object)?;
            warnings.extend(verdict.warnings);
            audit = verdict.audit;
            // Last: only an object every other check let through is charged.
            if !opts.dry_run {
                crate::resource_quota::admit(self, r, ns, &name, &object).await?;
            }
        }
        let key = r.key(namespace, &name);
        if opts.dry_run {
            return Ok(Written { object: convert::from_storage(r, object), warnings, audit });
        }
        let stored = if strategy::of(r.kind).allocates_addresses() {
            let _serial = self.service_lock.lock().await;
            self.allocate_service(None, &mut object).await?;
            self.store.create(&key, object).await
        } else if generate.is_empty() {
            self.store.create(&key, object).await
        } else {
            let mut attempt = self.store.create(&key, object.clone()).await;
            // A generated name that collided gets another suffix, as Kubernetes retries.
            for _ in 0..3 {
                if !matches!(attempt, Err(StoreError::AlreadyExists(_))) {
                    break;
                }
                let fresh = generated_name(&generate);
                meta::metadata_mut(&mut object).insert("name".into(), json!(fresh));
                attempt = self.store.create(&r.key(namespace, &fresh), object.clone()).await;
            }
            attempt
        };
        let stored = stored.map_err(store_err(r, &name))?;
        self.written(r, &stored);
        Ok(Written { object: convert::from_storage(r, stored), warnings, audit })
    }

    /// Tells the server's caches of a write they follow, before it is answered.
    pub(crate) fn written(&self, r: &ResourceType, stored: &Value) {
        match r.group {
            "" if r.kind == "Namespace" => self.namespaces.written(stored),
            "" if r.kind == "ResourceQuota" => self.quotas.changed(),
            "rbac.authorization.k8s.io" => self.rbac.changed(),
            _ => {}
        }
    }

    /// PodSecurity admission of a pod, or of a workload's pod template, in a namespace
    /// with `labels`: refused when a pod violates the enforced level, else the warnings
    /// and audit annotations.
    fn pod_security(&self, r: &ResourceType, labels: &Map<String, Value>, name: &str, object: &Value) -> ApiResult<pod_security::Verdict> {
        let policy = pod_security::NamespacePolicy::from_labels(Some(labels), self.config.pod_security);
        if r.group.is_empty() && r.kind == "Pod" {
            return pod_security::admit_pod(&policy, name, object);
        }
        Ok(pod_security::template_of(r.kind, object).map(|t| pod_security::admit_template(&policy, t)).unwrap_or_default())
    }

    /// Replaces `old` (stored form) with `new` (as received at `r`), for the object itself
    /// or its `status` subresource. `expected` is the resourceVersion precondition.
    pub async fn update_object(
        &self,
        r: &'static ResourceType,
        old: &Value,
        new: Value,
        subresource: Option<&str>,
        opts: WriteOptions,
    ) -> ApiResult<Written> {
        let mut new = new;
        check_kind(r, &mut new)?;
        let new = convert::to_storage(r, new);
        let applied_fields = new.pointer("/metadata/managedFields").cloned().filter(|_| opts.owner == Owner::Applied);
        let name = meta::name(old).unwrap_or_default().to_string();
        let namespace = meta::namespace(old).map(String::from);
        if let Some(body_name) = meta::name(&new)
            && body_name != name
        {
            return Err(ApiError::bad_request(format!("the name of the object ({body_name}) does not match the name on the URL ({name})")));
        }
        if r.namespaced && let Some(body_ns) = meta::namespace(&new)
            && Some(body_ns) != namespace.as_deref()
        {
            return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
        }
        let expected = match meta::resource_version(&new) {
            Some(rv) if !rv.is_empty() => Some(skiff_store::parse_revision(rv).ok_or_else(|| {
                ApiError::bad_request(format!("invalid resourceVersion {rv:?}: must be an integer"))
            })?),
            _ => None,
        };
        let mut object = match subresource {
            // A status write changes only the status.
            Some("status") => {
                let mut o = old.clone();
                o["status"] = new.get("status").cloned().unwrap_or(json!({}));
                o
            }
            _ => {
                let mut o = new;
                // Status is written through /status only, where that subresource exists.
                if r.has_subresource("status") {
                    match old.get("status") {
                        Some(s) => o["status"] = s.clone(),
                        None => {
                            if let Some(m) = o.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                o
            }
        };
        // Identity and lifecycle metadata are the server's.
        let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
        let m = meta::metadata_mut(&mut object);
        for field in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation", "namespace", "name"] {
            match old_meta.get(field) {
                Some(v) => m.insert(field.into(), v.clone()),
                None => m.remove(field),
            };
        }
        m.remove("resourceVersion");
        if meta::is_terminating(old) {
            // A terminating object may lose finalizers but gain none.
            let before = meta::finalizers(old);
            if meta::finalizers(&object).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(r.kind, r.group, &name, vec![crate::error::FieldError::forbidden(
                    "metadata.finalizers", "no new finalizers can be added if the object is being deleted")]));
            }
        }
        let forbidden = crate::validation::validate_update(r.kind, old, &object);
        if !forbidden.is_empty() {
            return Err(ApiError::invalid(r.kind, r.group, &name, forbidden));
        }
        if has_generation(&object) && subresource.is_none() {
            let spec_changed = strip_for_generation(old) != strip_for_generation(&object);
            let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
            let next = if spec_changed || generation == 0 { generation + 1 } else { generation };
            meta::metadata_mut(&mut object).insert("generation".into(), json!(next));
        }
        defaults::apply(r.kind, &mut object);
        let mut warnings = Vec::new();
        let mut object = normalise(r, object, opts.field_validation, &mut warnings)?;
        validate(r, &object)?;
        // PodSecurity looks again when what runs changes: a pod's spec, a workload's
        // template (not its replicas, as in Kubernetes).
        let mut audit = Vec::new();
        fn runs<'a>(kind: &str, o: &'a Value) -> Option<&'a Value> {
            if kind == "Pod" { o.get("spec") } else { pod_security::template_of(kind, o) }
        }
        if let Some(ns) = namespace.as_deref().filter(|_| subresource.is_none())
            && let Some(running) = runs(r.kind, &object)
            && runs(r.kind, old) != Some(running)
        {
            let labels = self.namespaces.labels(&*self.store, ns).await?;
            let verdict = self.pod_security(r, &labels, &name, &object)?;
            warnings.extend(verdict.warnings);
            audit = verdict.audit;
        }
        match (&opts.owner, applied_fields) {
            (Owner::Update(manager), _) => field_manager::record_update(Some(old), &mut object, manager, subresource, r.has_subresource("status"), &now()),
            (Owner::Applied, Some(fields)) => {
                meta::metadata_mut(&mut object).insert("managedFields".into(), fields);
            }
            (Owner::Applied, None) => {}
        }
        let key = r.key(namespace.as_deref(), &name);
        if opts.dry_run {
            return Ok(Written { object: convert::from_storage(r, object), warnings, audit });
        }
        // A write that changes nothing is not a change: same resourceVersion, no event.
        let mut unchanged = old.clone();
        meta::metadata_mut(&mut unchanged).remove("resourceVersion");
        if unchanged == object && expected.is_none_or(|e| Some(e) == object_revision(old)) {
            return Ok(Written { object: convert::from_storage(r, old.clone()), warnings, audit });
        }
        // The last finalizer gone from a terminating object completes its deletion.
        if meta::is_terminating(&object) && strategy::of(r.kind).finalizers(&object).is_empty() {
            let deleted = self.store.delete(&key, Some(expected.unwrap_or_else(|| object_revision(old).unwrap_or(0)))).await.map_err(store_err(r, &name))?;
            self.written(r, &deleted);
            return Ok(Written { object: convert::from_storage(r, deleted), warnings, audit });
        }
        let stored = if strategy::of(r.kind).allocates_addresses() {
            let _serial = self.service_lock.lock().await;
            self.allocate_service(Some(old), &mut object).await?;
            self.store.update(&key, object, expected).await
        } else {
            self.store.update(&key, object, expected).await
        };
        let stored = stored.map_err(store_err(r, &name))?;
        self.written(r, &stored);
        Ok(Written { object: convert::from_storage(r, stored), warnings, audit })
    }
}

/// Everything but metadata and status: what a change of bumps the generation.
fn strip_for_generation(object: &Value) -> Value {
    let mut o = object.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}
