//! The wire schema of the served kinds, flattened for the codec: per message, its fields by
//! JSON name and by number, each with what its JSON form needs (Go's `inline` structs,
//! pointer fields whose zero is a value, the apimachinery types with a JSON form of their own).

use std::collections::HashMap;
use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};

/// Index of a message in [`Schema::messages`].
pub(super) type MessageId = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scalar {
    Bool,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Double,
    Float,
    String,
    Bytes,
    Message(MessageId),
}

/// Messages whose JSON form is not an object of their fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Special {
    /// `metav1.Time`: RFC 3339 in whole seconds.
    Time,
    /// `metav1.MicroTime`: RFC 3339 with microseconds.
    MicroTime,
    /// `intstr.IntOrString`: a JSON number or string.
    IntOrString,
    /// `resource.Quantity`: its string.
    Quantity,
    /// `runtime.RawExtension`, `metav1.FieldsV1`: embedded JSON bytes.
    Raw,
    /// Go slice types with a message of their own (`ExtraValue`): the bare list.
    ListWrapper,
}

#[derive(Debug)]
pub(super) struct Field {
    pub name: String,
    pub number: u32,
    pub kind: Scalar,
    pub list: bool,
    /// For a map field, the kind of its values (keys are strings in the Kubernetes API).
    pub map_value: Option<Scalar>,
    /// A Go struct embedded with `json:",inline"`: its fields sit in the parent's object.
    pub inline: bool,
    /// A Go pointer field whose zero value is a choice, kept in JSON when zero.
    pub zero_is_set: bool,
}

#[derive(Debug)]
pub(super) struct Message {
    pub name: String,
    pub special: Option<Special>,
    pub fields: Vec<Field>,
    /// Indices of the inline fields.
    pub inline: Vec<usize>,
    /// Field indices sorted by name, and indexed by number: the codec's lookups, once per
    /// field of every object, are a binary search and an array index rather than hashing.
    by_name: Vec<usize>,
    by_number: Vec<Option<usize>>,
}

impl Message {
    pub fn field_named(&self, name: &str) -> Option<&Field> {
        let at = self.by_name.binary_search_by(|&i| self.fields[i].name.as_str().cmp(name)).ok()?;
        Some(&self.fields[self.by_name[at]])
    }

    pub fn field_numbered(&self, number: u32) -> Option<&Field> {
        self.by_number.get(number as usize).copied().flatten().map(|i| &self.fields[i])
    }
}

pub(super) struct Schema {
    pub messages: Vec<Message>,
    by_name: HashMap<String, MessageId>,
}

impl Schema {
    pub fn id(&self, full_name: &str) -> Option<MessageId> {
        self.by_name.get(full_name).copied()
    }

    pub fn message(&self, id: MessageId) -> &Message {
        &self.messages[id]
    }
}

pub(super) static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let pool = DescriptorPool::decode(include_bytes!("../../proto/kubernetes.fds").as_slice()).expect("the bundled descriptor set decodes");
    build(&pool)
});

/// Go structs embedded with `json:",inline"` (field name, message name).
const INLINE: &[(&str, &str)] = &[
    ("localObjectReference", "LocalObjectReference"),
    ("volumeSource", "VolumeSource"),
    ("persistentVolumeSource", "PersistentVolumeSource"),
    ("handler", "ProbeHandler"),
    ("ephemeralContainerCommon", "EphemeralContainerCommon"),
    ("ingressRuleValue", "IngressRuleValue"),
];

/// Go's encoder writes every non-pointer field, zero or not, so a protobuf body from
/// client-go carries `generateName: ""`, `targetPort: 0`… which Go's JSON omits and
/// defaulting treats as unset. A zero is therefore read as unset, except in these fields:
/// pointers in the Go API types whose zero means something (`replicas: 0`, `runAsUser: 0`,
/// `automountServiceAccountToken: false`, `maxUnavailable: 0`, `storageClassName: ""`…).
const ZERO_IS_SET: &[&str] = &[
    // counts and limits
    "replicas", "minReplicas", "parallelism", "completions", "backoffLimit", "backoffLimitPerIndex", "maxFailedIndexes",
    "activeDeadlineSeconds", "ttlSecondsAfterFinished", "revisionHistoryLimit", "progressDeadlineSeconds",
    "successfulJobsHistoryLimit", "failedJobsHistoryLimit", "startingDeadlineSeconds", "terminationGracePeriodSeconds",
    "gracePeriodSeconds", "deletionGracePeriodSeconds", "partition", "tolerationSeconds", "stabilizationWindowSeconds",
    "targetCPUUtilizationPercentage", "averageUtilization", "priority", "expirationSeconds", "tailLines", "limitBytes",
    "sinceSeconds", "leaseDurationSeconds", "leaseTransitions", "remainingItemCount", "minDomains",
    "maxSurge", "maxUnavailable", "minAvailable",
    // identities and file modes
    "runAsUser", "runAsGroup", "fsGroup", "defaultMode", "mode",
    // switches whose default is true, or whose explicit false is a policy
    "automountServiceAccountToken", "privileged", "allowPrivilegeEscalation", "runAsNonRoot", "readOnlyRootFilesystem",
    "hostUsers", "enableServiceLinks", "shareProcessNamespace", "setHostnameAsFQDN", "optional", "suspend",
    "allocateLoadBalancerNodePorts", "ready", "serving", "terminating", "immutable", "manualSelector",
    "blockOwnerDeletion", "controller", "started", "orphanDependents", "force",
    // an empty class name means "no class"
    "storageClassName", "volumeAttributesClassName",
];

fn special(desc: &MessageDescriptor) -> Option<Special> {
    Some(match desc.full_name() {
        "apimachinery.pkg.apis.meta.v1.Time" => Special::Time,
        "apimachinery.pkg.apis.meta.v1.MicroTime" => Special::MicroTime,
        "apimachinery.pkg.util.intstr.IntOrString" => Special::IntOrString,
        "apimachinery.pkg.api.resource.Quantity" => Special::Quantity,
        "apimachinery.pkg.runtime.RawExtension" | "apimachinery.pkg.apis.meta.v1.FieldsV1" => Special::Raw,
        _ => {
            let mut fields = desc.fields();
            let wrapper = fields.len() == 1 && fields.next().is_some_and(|f| f.name() == "items" && f.is_list()) && !desc.name().ends_with("List");
            return wrapper.then_some(Special::ListWrapper);
        }
    })
}

fn build(pool: &DescriptorPool) -> Schema {
    let descs: Vec<MessageDescriptor> = pool.all_messages().collect();
    let by_name: HashMap<String, MessageId> = descs.iter().enumerate().map(|(i, d)| (d.full_name().to_string(), i)).collect();
    let scalar = |kind: Kind| match kind {
        Kind::Bool => Scalar::Bool,
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Enum(_) => Scalar::Int32,
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Scalar::Int64,
        Kind::Uint32 | Kind::Fixed32 => Scalar::Uint32,
        Kind::Uint64 | Kind::Fixed64 => Scalar::Uint64,
        Kind::Double => Scalar::Double,
        Kind::Float => Scalar::Float,
        Kind::String => Scalar::String,
        Kind::Bytes => Scalar::Bytes,
        Kind::Message(m) => Scalar::Message(by_name[m.full_name()]),
    };
    let field = |f: FieldDescriptor| {
        let map_value = match f.kind() {
            Kind::Message(entry) if f.is_map() => Some(scalar(entry.map_entry_value_field().kind())),
            _ => None,
        };
        let inline = matches!(f.kind(), Kind::Message(m) if !f.is_list() && INLINE.contains(&(f.name(), m.name())));
        Field {
            name: f.name().to_string(),
            number: f.number(),
            kind: scalar(f.kind()),
            list: f.is_list(),
            map_value,
            inline,
            zero_is_set: ZERO_IS_SET.contains(&f.name()),
        }
    };
    let messages = descs
        .iter()
        .map(|d| {
            let fields: Vec<Field> = d.fields().map(field).collect();
            let mut by_name: Vec<usize> = (0..fields.len()).collect();
            by_name.sort_by(|&a, &b| fields[a].name.cmp(&fields[b].name));
            let mut by_number = vec![None; fields.iter().map(|f| f.number as usize + 1).max().unwrap_or(0)];
            for (i, f) in fields.iter().enumerate() {
                by_number[f.number as usize] = Some(i);
            }
            Message {
                name: d.full_name().to_string(),
                special: special(d),
                inline: fields.iter().enumerate().filter(|(_, f)| f.inline).map(|(i, _)| i).collect(),
                by_name,
                by_number,
                fields,
            }
        })
        .collect();
    Schema { messages, by_name }
}
