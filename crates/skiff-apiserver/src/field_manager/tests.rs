use serde_json::{Value, json};

use super::*;

const T: &str = "2026-01-01T00:00:00Z";

fn entries(o: &Value) -> Vec<(String, String, Value)> {
    o["metadata"]["managedFields"]
        .as_array()
        .map(|a| a.iter().map(|e| (e["manager"].as_str().unwrap().to_string(), e["operation"].as_str().unwrap().to_string(), e["fieldsV1"].clone())).collect())
        .unwrap_or_default()
}

fn cm(data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "d", "uid": "u", "resourceVersion": "5"}, "data": data})
}

fn apply_as(live: Option<&Value>, config: &Value, manager: &str, force: bool) -> Result<Value, Vec<Conflict>> {
    apply(live, config, &Apply { manager, force, subresource: None, has_status: false, now: T })
}

#[test]
fn a_create_is_owned_by_its_manager_without_server_metadata() {
    let mut o = cm(json!({"a": "1"}));
    o["metadata"]["labels"] = json!({"x": "y"});
    record_update(None, &mut o, "kubectl-create", None, false, T);
    assert_eq!(entries(&o), vec![("kubectl-create".into(), "Update".into(), json!({"f:data": {"f:a": {}}, "f:metadata": {"f:labels": {"f:x": {}}}}))]);
    assert_eq!(o["metadata"]["managedFields"][0]["time"], T);
}

#[test]
fn an_update_takes_the_fields_it_changes_and_an_idle_one_changes_nothing() {
    let mut old = cm(json!({"a": "1", "b": "2"}));
    record_update(None, &mut old, "creator", None, false, T);
    let mut new = old.clone();
    new["data"]["a"] = json!("changed");
    record_update(Some(&old), &mut new, "editor", None, false, "2026-02-02T00:00:00Z");
    assert_eq!(entries(&new), vec![
        ("creator".into(), "Update".into(), json!({"f:data": {"f:b": {}}})),
        ("editor".into(), "Update".into(), json!({"f:data": {"f:a": {}}})),
    ]);
    let mut same = new.clone();
    record_update(Some(&new), &mut same, "someone", None, false, "2026-03-03T00:00:00Z");
    assert_eq!(same, new);
}

#[test]
fn managed_fields_sent_with_an_update_are_taken_and_a_single_empty_entry_resets_them() {
    let mut old = cm(json!({"a": "1"}));
    record_update(None, &mut old, "kubectl-client-side-apply", None, false, T);
    // kubectl's migration to server-side apply rewrites the entries in a JSON patch.
    let mut new = old.clone();
    new["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:a": {}}}}]);
    record_update(Some(&old), &mut new, "kubectl", None, false, T);
    assert_eq!(entries(&new), vec![("kubectl".into(), "Apply".into(), json!({"f:data": {"f:a": {}}}))]);
    let mut reset = old.clone();
    reset["metadata"]["managedFields"] = json!([{}]);
    record_update(Some(&old), &mut reset, "x", None, false, T);
    assert!(reset["metadata"].get("managedFields").is_none());
    // A status write cannot touch them.
    let mut status = old.clone();
    status["metadata"]["managedFields"] = json!([{}]);
    record_update(Some(&old), &mut status, "x", Some("status"), false, T);
    assert_eq!(entries(&status), entries(&old));
}

#[test]
fn apply_creates_conflicts_and_forces() {
    let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
    let created = apply_as(None, &config, "alice", false).unwrap();
    assert_eq!(entries(&created), vec![("alice".into(), "Apply".into(), json!({"f:data": {"f:a": {}}}))]);
    // The same value from another applier is shared, not a conflict.
    let shared = apply_as(Some(&created), &config, "bob", false).unwrap();
    assert_eq!(entries(&shared).len(), 2);
    // A different value is.
    let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "2"}});
    let conflicts = apply_as(Some(&shared), &other, "carol", false).unwrap_err();
    assert_eq!(conflicts, vec![Conflict { manager: "\"alice\"".into(), field: ".data.a".into() }, Conflict { manager: "\"bob\"".into(), field: ".data.a".into() }]);
    let e = conflict_error(&conflicts);
    assert_eq!(e.code, 409);
    assert!(is_field_conflict(&e));
    assert_eq!(e.message, "Apply failed with 2 conflicts: conflicts with \"alice\":\n- .data.a\nconflicts with \"bob\":\n- .data.a");
    let forced = apply_as(Some(&shared), &other, "carol", true).unwrap();
    assert_eq!(forced["data"]["a"], "2");
    assert_eq!(entries(&forced), vec![("carol".into(), "Apply".into(), json!({"f:data": {"f:a": {}}}))]);
}

#[test]
fn an_update_conflicts_with_an_apply_as_a_manager_using_its_version() {
    let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
    let mut live = cm(json!({"a": "0"}));
    record_update(None, &mut live, "kubectl-edit", None, false, T);
    let e = conflict_error(&apply_as(Some(&live), &config, "kubectl", false).unwrap_err());
    assert_eq!(e.message, "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using v1: .data.a");
}

#[test]
fn fields_an_applier_stops_applying_are_removed_unless_another_owns_them() {
    let v1 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"l": "1"}}, "data": {"a": "1", "b": "2"}});
    let live = apply_as(None, &v1, "alice", false).unwrap();
    let mut edited = live.clone();
    edited["data"]["c"] = json!("3");
    let mut bob = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"b": "2"}});
    let live = {
        record_update(Some(&live), &mut edited, "editor", None, false, T);
        bob = apply_as(Some(&edited), &bob, "bob", false).unwrap();
        bob
    };
    let v2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
    let after = apply_as(Some(&live), &v2, "alice", false).unwrap();
    // b is still bob's, c the editor's; the label was alice's alone.
    assert_eq!(after["data"], json!({"a": "1", "b": "2", "c": "3"}));
    assert_eq!(after["metadata"]["labels"], json!({}));
}

#[test]
fn keyed_items_merge_by_their_keys() {
    let deploy = |image: &str| json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "app", "image": image}]}}}});
    let live = apply_as(None, &deploy("a:1"), "ci", false).unwrap();
    // A sidecar injector adds its own container; the next apply keeps it.
    let mut injected = live.clone();
    injected["spec"]["template"]["spec"]["containers"].as_array_mut().unwrap().push(json!({"name": "sidecar", "image": "s"}));
    record_update(Some(&live), &mut injected, "injector", None, false, T);
    let after = apply_as(Some(&injected), &deploy("a:2"), "ci", false).unwrap();
    let containers = &after["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers, &json!([{"name": "app", "image": "a:2"}, {"name": "sidecar", "image": "s"}]));
    // `kubectl scale` takes the replicas; the applier's next different count conflicts.
    let mut scaled = after.clone();
    scaled["spec"]["replicas"] = json!(5);
    record_update(Some(&after), &mut scaled, "kubectl-scale", None, false, T);
    let mut three = deploy("a:2");
    three["spec"]["replicas"] = json!(3);
    let conflicts = apply_as(Some(&scaled), &three, "ci", false).unwrap_err();
    assert_eq!(conflicts[0].field, ".spec.replicas");
}

#[test]
fn kubectl_moving_to_server_side_takes_what_it_applied_client_side() {
    let mut live = cm(json!({"a": "1", "b": "2"}));
    live["metadata"]["annotations"] = json!({LAST_APPLIED: "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"c\"},\"data\":{\"a\":\"1\"}}"});
    record_update(None, &mut live, "kubectl-client-side-apply", None, false, T);
    let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "2"}});
    let after = apply_as(Some(&live), &config, "kubectl", false).unwrap();
    assert_eq!(after["data"]["a"], "2");
    let annotation: Value = serde_json::from_str(after["metadata"]["annotations"][LAST_APPLIED].as_str().unwrap()).unwrap();
    assert_eq!(annotation, config);
    // b was never in the last applied configuration: that stays a conflict, and for
    // another manager so does a.
    let both = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "2", "b": "3"}});
    assert_eq!(apply_as(Some(&live), &both, "kubectl", false).unwrap_err(), vec![Conflict { manager: "\"kubectl-client-side-apply\" using v1".into(), field: ".data.b".into() }]);
    assert!(apply_as(Some(&live), &config, "helm", false).is_err());
}

mod properties {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::super::fieldset::FieldSet;
    use super::super::*;
    use super::T;

    /// Small JSON trees shaped like objects: maps, keyed lists of containers, sets of
    /// finalizers, scalars.
    fn tree() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![any::<bool>().prop_map(Value::from), (0i64..5).prop_map(Value::from), "[a-c]{0,2}".prop_map(Value::from)];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::btree_map("[a-d]", inner.clone(), 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
                proptest::collection::vec(("[a-c]", inner.clone()).prop_map(|(n, v)| json!({"name": n, "image": v})), 0..3)
                    .prop_map(|items| json!({"containers": items})),
                proptest::collection::vec("[x-z]", 0..3).prop_map(|f| json!({"finalizers": f})),
            ]
        })
    }

    fn config(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "spec": data})
    }

    proptest! {
        #[test]
        fn any_fields_v1_reads_without_panicking(v in tree()) {
            if let Ok(set) = FieldSet::from_fields_v1(&v) {
                prop_assert_eq!(FieldSet::from_fields_v1(&set.to_fields_v1()).unwrap(), set);
            }
        }

        #[test]
        fn an_object_compared_with_itself_changed_nothing(v in tree()) {
            let (changed, removed) = walk::compare("", &v, &v);
            prop_assert!(changed.is_empty() && removed.is_empty());
        }

        #[test]
        fn applying_twice_is_applying_once(a in tree(), b in tree()) {
            let how = Apply { manager: "m", force: false, subresource: None, has_status: false, now: T };
            let once = apply(None, &config(a.clone()), &how).unwrap();
            let mut updated = once.clone();
            updated["spec"] = json!({"other": b});
            record_update(Some(&once), &mut updated, "editor", None, false, T);
            // A forced re-apply of the same configuration converges: a third changes nothing.
            let forced = Apply { force: true, ..how };
            let twice = apply(Some(&updated), &config(a.clone()), &forced).unwrap();
            let thrice = apply(Some(&twice), &config(a), &forced).unwrap();
            prop_assert_eq!(thrice, twice);
        }
    }
}
