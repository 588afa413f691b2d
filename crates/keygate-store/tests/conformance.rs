//! The store conformance suite: the same behaviour asked of every backend.

use keygate_core::settings::InstanceSettings;
use keygate_core::usage::UsageDelta;
use keygate_core::{KeyOrigin, KeyRecord, key_format};
use keygate_core::{Role, UserRecord};
use keygate_store::webhooks::{AttemptOutcome, DeliveryStatus, DueDelivery};
use keygate_store::{
    AuditEntry, AuditFilter, Entity, KeyPage, KeyUpdate, RefreshOutcome, RefreshToken, SqliteStore,
    Store, StoreError, UserUpdate,
};
use keygate_store::{OutboxEvent, WebhookEndpoint};
use uuid::Uuid;

fn record(n: u8, at: i64) -> KeyRecord {
    let key = key_format::format_key("kg", &[n; 32]).expect("valid prefix");
    KeyRecord {
        id: Uuid::now_v7(),
        hash: key_format::hash_key(&key),
        start: key[..7].to_string(),
        name: format!("key {n}"),
        scopes: vec!["read".into()],
        meta: serde_json::json!({"plan": "free"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        enabled: true,
        origin: KeyOrigin::Generated,
        global: false,
        owner: None,
        plan: None,
        limits: Default::default(),
        allowed_cidrs: vec!["10.0.0.0/8".parse().expect("net")],
        project: None,
        created_at: at,
        updated_at: at,
        expires_at: None,
        revoked_at: None,
        rotated_to: None,
        last_used_at: None,
        usage_count: 0,
    }
}

fn audit(at: i64, action: &str) -> AuditEntry {
    AuditEntry {
        at,
        actor: "test".into(),
        action: action.into(),
        ..Default::default()
    }
}

async fn conformance(store: &dyn Store) {
    assert_eq!(store.latest_seq().await.expect("seq"), 0);
    let a = record(1, 1000);
    store
        .insert_key(&a, None, &audit(1000, "key.create"))
        .await
        .expect("insert");
    assert_eq!(store.get_key(a.id).await.expect("get"), Some(a.clone()));

    // Same hash twice is a conflict, not a second row.
    let mut dup = record(1, 1001);
    dup.id = Uuid::now_v7();
    assert!(matches!(
        store
            .insert_key(&dup, None, &audit(1001, "key.create"))
            .await,
        Err(StoreError::Conflict(_))
    ));

    // Updates touch only the named fields; null expiry clears.
    let update = KeyUpdate {
        name: Some("renamed".into()),
        expires_at: Some(Some(5000)),
        ..Default::default()
    };
    let updated = store
        .update_key(a.id, &update, &audit(2000, "key.update"))
        .await
        .expect("update")
        .expect("exists");
    assert_eq!(
        (
            updated.name.as_str(),
            updated.expires_at,
            updated.scopes.len()
        ),
        ("renamed", Some(5000), 1)
    );
    let cleared = KeyUpdate {
        expires_at: Some(None),
        ..Default::default()
    };
    let updated = store
        .update_key(a.id, &cleared, &audit(2001, "key.update"))
        .await
        .expect("update")
        .expect("exists");
    assert_eq!(updated.expires_at, None);
    assert!(
        store
            .update_key(Uuid::now_v7(), &cleared, &audit(1, "key.update"))
            .await
            .expect("update")
            .is_none()
    );

    // Revocation is idempotent.
    let revoked = store
        .revoke_key(a.id, &audit(3000, "key.revoke"))
        .await
        .expect("revoke")
        .expect("exists");
    assert_eq!(revoked.revoked_at, Some(3000));
    let again = store
        .revoke_key(a.id, &audit(4000, "key.revoke"))
        .await
        .expect("revoke")
        .expect("exists");
    assert_eq!(again.revoked_at, Some(3000));

    // Rotation stores the replacement and links the old key; revoked keys refuse.
    let b = record(2, 5000);
    let c = record(3, 6000);
    store
        .insert_key(&b, None, &audit(5000, "key.create"))
        .await
        .expect("insert");
    let old = store
        .rotate_key(b.id, &c, 9000, &audit(6000, "key.rotate"))
        .await
        .expect("rotate")
        .expect("exists");
    assert_eq!((old.expires_at, old.rotated_to), (Some(9000), Some(c.id)));
    assert!(matches!(
        store
            .rotate_key(b.id, &record(4, 1), 1, &audit(1, "key.rotate"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .rotate_key(a.id, &record(5, 1), 1, &audit(1, "key.rotate"))
            .await,
        Err(StoreError::Conflict(_))
    ));

    // The feed lists every write in order.
    let changes = store.changes_since(0, 100).await.expect("changes");
    let ops: Vec<&str> = changes.iter().map(|c| c.op.as_str()).collect();
    assert_eq!(
        ops,
        [
            "insert", "update", "update", "revoke", "insert", "insert", "rotate"
        ]
    );
    assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(changes.iter().all(|c| c.entity == Entity::Key));
    let latest = store.latest_seq().await.expect("seq");
    assert_eq!(latest, changes.last().expect("one").seq);
    assert_eq!(
        store.changes_since(latest, 100).await.expect("changes"),
        vec![]
    );
    assert_eq!(store.changes_since(0, 2).await.expect("changes").len(), 2);

    // Listing is newest first and pages.
    let page = store
        .list_keys(KeyPage {
            limit: 2,
            offset: 0,
            owner: None,
        })
        .await
        .expect("list");
    assert_eq!(
        page.iter().map(|k| k.id).collect::<Vec<_>>(),
        vec![c.id, b.id]
    );
    let rest = store
        .list_keys(KeyPage {
            limit: 2,
            offset: 2,
            owner: None,
        })
        .await
        .expect("list");
    assert_eq!(rest.iter().map(|k| k.id).collect::<Vec<_>>(), vec![a.id]);
    let by_id = store
        .keys_by_id(&[a.id, c.id, Uuid::now_v7()])
        .await
        .expect("by id");
    assert_eq!(by_id.len(), 2);

    // Usage adds up and keeps the latest time.
    let deltas = [
        UsageDelta {
            key_id: c.id,
            uses: 3,
            last_used_at: 7000,
            quota: vec![],
            minutes: vec![],
        },
        UsageDelta {
            key_id: Uuid::now_v7(),
            uses: 1,
            last_used_at: 1,
            quota: vec![],
            minutes: vec![],
        },
    ];
    store.add_usage(&deltas).await.expect("usage");
    store
        .add_usage(&[UsageDelta {
            key_id: c.id,
            uses: 2,
            last_used_at: 6500,
            quota: vec![],
            minutes: vec![],
        }])
        .await
        .expect("usage");
    let used = store.get_key(c.id).await.expect("get").expect("exists");
    assert_eq!((used.usage_count, used.last_used_at), (5, Some(7000)));

    // One global key at most.
    let mut global = record(6, 8000);
    global.global = true;
    assert!(
        store
            .insert_global_key_if_absent(&global)
            .await
            .expect("global")
    );
    let mut second = record(7, 8001);
    second.global = true;
    assert!(
        !store
            .insert_global_key_if_absent(&second)
            .await
            .expect("global")
    );

    // Settings default, then persist and appear in the feed.
    assert_eq!(
        store.settings().await.expect("settings"),
        InstanceSettings::default()
    );
    let off = InstanceSettings {
        api_access_enabled: false,
        query_param_enabled: true,
        keys_per_user: Some(1),
    };
    store
        .put_settings(&off, &audit(9000, "settings.update"))
        .await
        .expect("put");
    assert_eq!(store.settings().await.expect("settings"), off);
    let last = store.changes_since(latest, 100).await.expect("changes");
    assert_eq!(last.last().map(|c| c.entity), Some(Entity::Settings));

    // Load sees everything and the position it reflects; pruning keeps the position.
    let (keys, seq) = store.load_keys().await.expect("load");
    assert_eq!(
        (keys.len(), seq),
        (4, store.latest_seq().await.expect("seq"))
    );
    assert!(store.prune_changes(i64::MAX).await.expect("prune") > 0);
    assert_eq!(store.latest_seq().await.expect("seq"), seq);
}

fn user(name: &str, role: Role) -> UserRecord {
    UserRecord {
        id: Uuid::now_v7(),
        username: name.into(),
        email: None,
        role,
        disabled: false,
        created_at: 100,
        updated_at: 100,
        last_login_at: None,
    }
}

async fn accounts_conformance(store: &dyn Store) {
    let ana = user("Ana", Role::User);
    store
        .create_user(&ana, "$argon2id$hash", &audit(100, "user.create"))
        .await
        .expect("create");
    assert!(matches!(
        store
            .create_user(&user("ANA", Role::Admin), "x", &audit(100, "user.create"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    let (found, hash) = store
        .user_for_login("ana")
        .await
        .expect("login")
        .expect("found");
    assert_eq!((found.id, hash.as_str()), (ana.id, "$argon2id$hash"));
    assert_eq!(store.count_users().await.expect("count"), 1);

    // Keys per owner: keeping 1 revokes the older key in the same write.
    let mut k1 = record(11, 200);
    k1.owner = Some(ana.id);
    let mut k2 = record(12, 300);
    k2.owner = Some(ana.id);
    assert!(
        store
            .insert_key(&k1, Some(1), &audit(200, "key.create"))
            .await
            .expect("k1")
            .is_empty()
    );
    assert_eq!(
        store
            .insert_key(&k2, Some(1), &audit(300, "key.create"))
            .await
            .expect("k2"),
        vec![k1.id]
    );
    let owned = store
        .list_keys(KeyPage {
            limit: 10,
            offset: 0,
            owner: Some(ana.id),
        })
        .await
        .expect("list");
    assert_eq!(owned.len(), 2);

    // Token families: rotation, reuse detection, revocation.
    let first = RefreshToken {
        jti: "r1".into(),
        family: "f1".into(),
        user_id: ana.id,
        issued_at: 400,
        expires_at: 10_000,
    };
    store
        .create_family(&first, &audit(400, "auth.login"))
        .await
        .expect("family");
    let second = RefreshToken {
        jti: "r2".into(),
        ..first.clone()
    };
    assert_eq!(
        store
            .rotate_refresh("r1", &second, 500)
            .await
            .expect("rotate"),
        RefreshOutcome::Rotated
    );
    let third = RefreshToken {
        jti: "r3".into(),
        ..first.clone()
    };
    assert_eq!(
        store
            .rotate_refresh("r1", &third, 600)
            .await
            .expect("reuse"),
        RefreshOutcome::Reused {
            family: "f1".into(),
            user_id: ana.id
        }
    );
    assert_eq!(
        store
            .rotate_refresh("r2", &third, 700)
            .await
            .expect("revoked"),
        RefreshOutcome::Revoked
    );
    assert_eq!(
        store
            .rotate_refresh("nope", &third, 700)
            .await
            .expect("unknown"),
        RefreshOutcome::Unknown
    );
    assert_eq!(
        store.revoked_families(700).await.expect("revoked"),
        vec![("f1".to_string(), 10_000)]
    );
    assert!(
        !store
            .revoke_family("f1", "again", &audit(800, "auth.logout"))
            .await
            .expect("revoke")
    );

    // A password change ends every sign-in of the user.
    let other = RefreshToken {
        jti: "s1".into(),
        family: "f2".into(),
        user_id: ana.id,
        issued_at: 900,
        expires_at: 10_000,
    };
    store
        .create_family(&other, &audit(900, "auth.login"))
        .await
        .expect("family");
    // Only the live sign-in is listed (f1 was revoked on reuse); none once expired.
    let live = store.active_sign_ins(ana.id, 920).await.expect("sign-ins");
    assert_eq!(
        live.iter().map(|s| s.family.as_str()).collect::<Vec<_>>(),
        vec!["f2"]
    );
    assert!(
        store
            .active_sign_ins(ana.id, 10_000)
            .await
            .expect("sign-ins")
            .is_empty()
    );
    assert!(
        store
            .set_password(ana.id, "$new", &audit(950, "user.password"))
            .await
            .expect("password")
    );
    assert_eq!(store.revoked_families(960).await.expect("revoked").len(), 2);

    // Updates and deletion; deletion revokes the user's keys.
    let disabled = UserUpdate {
        disabled: Some(true),
        email: Some(Some("a@x".into())),
        ..Default::default()
    };
    let updated = store
        .update_user(ana.id, &disabled, &audit(1000, "user.update"))
        .await
        .expect("update")
        .expect("user");
    assert!(updated.disabled && updated.email.as_deref() == Some("a@x"));
    store
        .delete_user(ana.id, &audit(1100, "user.delete"))
        .await
        .expect("delete")
        .expect("user");
    assert!(store.get_user(ana.id).await.expect("get").is_none());
    assert!(
        store
            .get_key(k2.id)
            .await
            .expect("get")
            .expect("key")
            .revoked_at
            .is_some()
    );
    let kinds: Vec<Entity> = store
        .changes_since(0, 1000)
        .await
        .expect("changes")
        .iter()
        .map(|c| c.entity)
        .collect();
    assert!(kinds.contains(&Entity::User) && kinds.contains(&Entity::Family));

    // The audit log, filtered and paged; secrets.
    let all = store
        .list_audit(&AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("audit");
    assert!(all.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
    let users = store
        .list_audit(&AuditFilter {
            action: Some("user".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("audit");
    assert!(!users.is_empty() && users.iter().all(|r| r.entry.action.starts_with("user.")));
    let tail = store
        .list_audit(&AuditFilter {
            after_seq: Some(all[2].seq),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("tail");
    assert_eq!(tail.len(), 2);
    // Plans, and quota use per month.
    let plan = keygate_store::Plan {
        id: Uuid::now_v7(),
        name: "pro".into(),
        limits: keygate_core::limit::Limits {
            monthly_quota: Some(10),
            ..Default::default()
        },
        created_at: 1,
        updated_at: 1,
    };
    store
        .create_plan(&plan, &audit(1, "plan.create"))
        .await
        .expect("plan");
    assert!(matches!(
        store
            .create_plan(
                &keygate_store::Plan {
                    id: Uuid::now_v7(),
                    ..plan.clone()
                },
                &audit(1, "plan.create")
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    let mut changed = plan.clone();
    changed.limits.monthly_quota = Some(20);
    assert!(
        store
            .update_plan(&changed, &audit(2, "plan.update"))
            .await
            .expect("update")
    );
    assert_eq!(store.get_plan(plan.id).await.expect("get"), Some(changed));
    assert_eq!(store.load_plans().await.expect("plans").len(), 1);
    let mut k3 = record(13, 400);
    k3.plan = Some(plan.id);
    k3.limits.monthly_quota = Some(5);
    store
        .insert_key(&k3, None, &audit(400, "key.create"))
        .await
        .expect("k3");
    assert_eq!(
        store
            .get_key(k3.id)
            .await
            .expect("get")
            .expect("key")
            .limits
            .monthly_quota,
        Some(5)
    );
    let minute = |start, valid| keygate_core::usage::MinuteCounts {
        minute: start,
        valid,
        denied: 1,
        ..Default::default()
    };
    let delta = |n| keygate_core::usage::UsageDelta {
        key_id: k3.id,
        uses: n,
        last_used_at: 500,
        quota: vec![(24_000, n)],
        minutes: vec![minute(0, n), minute(3_660_000, 1)],
    };
    store.add_usage(&[delta(3)]).await.expect("usage");
    store.add_usage(&[delta(4)]).await.expect("usage");
    assert_eq!(
        store.quota_usage(24_000).await.expect("quota"),
        vec![(k3.id, 7)]
    );
    assert!(store.quota_usage(24_001).await.expect("quota").is_empty());
    // Usage rows: by minute, by hour, and after a roll-up.
    let by_minute = store
        .usage(Some(&[k3.id]), 0, 86_400_000, 60_000)
        .await
        .expect("usage");
    assert_eq!(
        by_minute
            .iter()
            .map(|m| (m.minute, m.valid, m.denied))
            .collect::<Vec<_>>(),
        vec![(0, 7, 2), (3_660_000, 2, 2)]
    );
    let by_hour = store
        .usage(None, 0, 86_400_000, 3_600_000)
        .await
        .expect("usage");
    assert_eq!(
        by_hour
            .iter()
            .map(|m| (m.minute, m.total()))
            .collect::<Vec<_>>(),
        vec![(0, 9), (3_600_000, 4)]
    );
    store.roll_up_usage(86_400_000, 0).await.expect("roll up");
    let rolled = store
        .usage(Some(&[k3.id]), 0, 86_400_000, 60_000)
        .await
        .expect("usage");
    assert_eq!(
        rolled
            .iter()
            .map(|m| (m.minute, m.total()))
            .collect::<Vec<_>>(),
        vec![(0, 9), (3_600_000, 4)]
    );
    assert!(
        store
            .usage(Some(&[Uuid::now_v7()]), 0, 86_400_000, 60_000)
            .await
            .expect("usage")
            .is_empty()
    );

    // The last enabled administrator cannot be disabled, demoted or deleted.
    let root = user("root", Role::Admin);
    store
        .create_user(&root, "$h", &audit(1, "user.create"))
        .await
        .expect("admin");
    let disable = UserUpdate {
        disabled: Some(true),
        ..Default::default()
    };
    assert!(matches!(
        store
            .update_user(root.id, &disable, &audit(2, "user.update"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    let demote = UserUpdate {
        role: Some(Role::User),
        ..Default::default()
    };
    assert!(matches!(
        store
            .update_user(root.id, &demote, &audit(2, "user.update"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.delete_user(root.id, &audit(2, "user.delete")).await,
        Err(StoreError::Conflict(_))
    ));

    // Projects: members, renames, deletion revoking project-level keys.
    let project = keygate_store::Project {
        id: Uuid::now_v7(),
        name: "alpha".into(),
        members: vec![(ana.id, "owner".into())],
        created_at: 1,
        updated_at: 1,
    };
    store
        .create_project(&project, &audit(1, "project.create"))
        .await
        .expect("project");
    let other = Uuid::now_v7();
    assert!(
        store
            .set_member(
                project.id,
                other,
                Some("member"),
                &audit(2, "project.member")
            )
            .await
            .expect("member")
    );
    assert!(
        !store
            .set_member(
                Uuid::now_v7(),
                other,
                Some("member"),
                &audit(2, "project.member")
            )
            .await
            .expect("no project")
    );
    assert!(
        store
            .rename_project(project.id, "alpha 2", &audit(3, "project.update"))
            .await
            .expect("rename")
    );
    let loaded = store
        .get_project(project.id)
        .await
        .expect("get")
        .expect("project");
    assert_eq!((loaded.name.as_str(), loaded.members.len()), ("alpha 2", 2));
    assert!(
        store
            .set_member(project.id, other, None, &audit(4, "project.member"))
            .await
            .expect("remove")
    );
    let mut pinned = record(14, 500);
    pinned.project = Some(project.id);
    store
        .insert_key(&pinned, None, &audit(500, "key.create"))
        .await
        .expect("pinned");
    assert_eq!(
        store
            .get_key(pinned.id)
            .await
            .expect("get")
            .expect("key")
            .project,
        Some(project.id)
    );
    assert!(
        store
            .delete_project(project.id, &audit(600, "project.delete"))
            .await
            .expect("delete")
    );
    assert!(
        store
            .get_key(pinned.id)
            .await
            .expect("get")
            .expect("key")
            .revoked_at
            .is_some()
    );
    assert!(store.load_projects().await.expect("projects").is_empty());

    assert_eq!(store.secret("jwt").await.expect("secret"), None);
    assert_eq!(
        store.secret_or_insert("jwt", "one").await.expect("insert"),
        "one"
    );
    assert_eq!(
        store.secret_or_insert("jwt", "two").await.expect("keep"),
        "one"
    );
    store.put_secret("jwt", "three").await.expect("put");
    assert_eq!(
        store.secret("jwt").await.expect("secret").as_deref(),
        Some("three")
    );
}

fn endpoint(owner: Option<Uuid>, project: Option<Uuid>, events: &[&str]) -> WebhookEndpoint {
    WebhookEndpoint {
        id: Uuid::now_v7(),
        url: "http://receiver.example/hook".into(),
        events: events.iter().map(|e| e.to_string()).collect(),
        enabled: true,
        description: String::new(),
        owner,
        project,
        secret: "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0".into(),
        previous_secret: None,
        previous_secret_until: None,
        signature_header: None,
        consecutive_failures: 0,
        disabled_reason: None,
        created_at: 1000,
        updated_at: 1000,
    }
}

/// The outbox: fan-out rules, claiming with a lease, finishing, releasing.
async fn webhook_conformance(store: &dyn Store) {
    let admin = user("boss", Role::Admin);
    let member = user("member", Role::User);
    for u in [&admin, &member] {
        store
            .create_user(u, "$argon2id$x", &audit(900, "user.create"))
            .await
            .expect("user");
    }
    let outsider = user("outsider", Role::User);
    store
        .create_user(&outsider, "$argon2id$x", &audit(900, "user.create"))
        .await
        .expect("user");
    let project = Uuid::now_v7();
    store
        .create_project(
            &keygate_store::Project {
                id: project,
                name: "p".into(),
                members: vec![(member.id, "owner".into())],
                created_at: 950,
                updated_at: 950,
            },
            &audit(950, "project.create"),
        )
        .await
        .expect("project");
    // Not a member of the project: its endpoint there hears nothing.
    let outsiders = endpoint(Some(outsider.id), Some(project), &[]);
    store
        .create_webhook(&outsiders, &audit(1000, "webhook.create"))
        .await
        .expect("create");
    let instance = endpoint(None, None, &[]);
    let admins = endpoint(Some(admin.id), None, &["key.created"]);
    let members = endpoint(Some(member.id), None, &[]);
    let projects = endpoint(Some(member.id), Some(project), &["key.created"]);
    let other_type = endpoint(None, None, &["user.created"]);
    for e in [&instance, &admins, &members, &projects, &other_type] {
        store
            .create_webhook(e, &audit(1000, "webhook.create"))
            .await
            .expect("create");
    }
    assert_eq!(
        store.get_webhook(members.id).await.expect("get"),
        Some(members.clone())
    );

    // A key of the member in the project: instance, admin, member and project endpoints
    // hear it; the endpoint for another type does not.
    let mut key = record(40, 2000);
    key.owner = Some(member.id);
    key.project = Some(project);
    let mut entry = audit(2000, "key.create");
    entry
        .events
        .push(OutboxEvent::for_key("key.created", &key, 2000));
    store.insert_key(&key, None, &entry).await.expect("insert");
    let due = store
        .claim_deliveries(2000, 62_000, 100)
        .await
        .expect("claim");
    let mut endpoints: Vec<Uuid> = due.iter().map(|d| d.endpoint.id).collect();
    endpoints.sort();
    let mut expected = vec![instance.id, admins.id, members.id, projects.id];
    expected.sort();
    assert_eq!(endpoints, expected);
    assert!(due.iter().all(|d| d.payload["type"] == "key.created"));
    // Leased: not claimed again until the lease ends, unless released.
    assert!(
        store
            .claim_deliveries(3000, 63_000, 100)
            .await
            .expect("claim")
            .is_empty()
    );
    assert_eq!(store.release_deliveries().await.expect("release"), 4);
    let due = store
        .claim_deliveries(3000, 63_000, 100)
        .await
        .expect("claim");
    assert_eq!(due.len(), 4);

    // One delivered, one retried later, one gone (410 disables its endpoint).
    let outcome = |d: &DueDelivery, status, next| AttemptOutcome {
        delivery: d.delivery.id,
        endpoint: d.endpoint.id,
        at: 4000,
        status,
        next_attempt_at: next,
        status_code: Some(500),
        error: None,
        latency_ms: 3,
        disable_endpoint: None,
    };
    store
        .finish_attempt(&outcome(&due[0], DeliveryStatus::Delivered, None))
        .await
        .expect("finish");
    store
        .finish_attempt(&outcome(&due[1], DeliveryStatus::Pending, Some(9000)))
        .await
        .expect("finish");
    let mut gone = outcome(&due[2], DeliveryStatus::Failed, None);
    gone.disable_endpoint = Some("410".into());
    store.finish_attempt(&gone).await.expect("finish");
    let disabled = store
        .get_webhook(due[2].endpoint.id)
        .await
        .expect("get")
        .expect("endpoint");
    assert!(!disabled.enabled);
    assert_eq!(disabled.consecutive_failures, 1);
    // The retried one is due at 9000, not before (the fourth was never finished: leased).
    assert!(
        store
            .claim_deliveries(8000, 68_000, 100)
            .await
            .expect("claim")
            .is_empty()
    );
    let again = store
        .claim_deliveries(9000, 69_000, 100)
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery.attempts, 1);
    // A write from an earlier read never undoes failures counted since; switching a
    // disabled endpoint back on starts the count from zero.
    let read = store
        .get_webhook(due[1].endpoint.id)
        .await
        .expect("get")
        .expect("endpoint");
    assert_eq!(read.consecutive_failures, 1);
    store
        .finish_attempt(&outcome(&again[0], DeliveryStatus::Pending, Some(60_000)))
        .await
        .expect("finish");
    let mut edited = read.clone();
    edited.description = "edited".into();
    edited.updated_at = read.updated_at + 1;
    assert!(
        store
            .update_webhook(&edited, read.updated_at, &audit(4100, "webhook.update"))
            .await
            .expect("update")
    );
    let stored = store
        .get_webhook(read.id)
        .await
        .expect("get")
        .expect("endpoint");
    assert_eq!(
        (stored.description.as_str(), stored.consecutive_failures),
        ("edited", 2)
    );
    let mut paused = stored.clone();
    paused.enabled = false;
    paused.updated_at = stored.updated_at + 1;
    store
        .update_webhook(&paused, stored.updated_at, &audit(4200, "webhook.update"))
        .await
        .expect("update");
    let mut resumed = paused.clone();
    resumed.enabled = true;
    resumed.updated_at = paused.updated_at + 1;
    store
        .update_webhook(&resumed, paused.updated_at, &audit(4300, "webhook.update"))
        .await
        .expect("update");
    assert_eq!(
        store
            .get_webhook(read.id)
            .await
            .expect("get")
            .expect("endpoint")
            .consecutive_failures,
        0
    );
    let listed = store
        .list_deliveries(due[0].endpoint.id, 10)
        .await
        .expect("list");
    assert_eq!(listed[0].status, DeliveryStatus::Delivered);
    assert!(
        store
            .retry_delivery(due[0].endpoint.id, listed[0].id, 10_000)
            .await
            .expect("retry")
    );
    assert!(
        !store
            .retry_delivery(due[0].endpoint.id, Uuid::now_v7(), 10_000)
            .await
            .expect("retry")
    );

    // A test event reaches its one endpoint whatever it subscribed to; a notice is sent once.
    let mut test = OutboxEvent::new("webhook.test", serde_json::json!({}), 11_000);
    test.endpoint = Some(other_type.id);
    store.enqueue_events(&[test]).await.expect("enqueue");
    let expiring = OutboxEvent::for_key("key.expiring", &key, 11_000);
    assert!(
        store
            .enqueue_once(key.id, "expiring", &expiring)
            .await
            .expect("once")
    );
    let expiring = OutboxEvent::for_key("key.expiring", &key, 11_500);
    assert!(
        !store
            .enqueue_once(key.id, "expiring", &expiring)
            .await
            .expect("once")
    );
    let due = store
        .claim_deliveries(12_000, 72_000, 100)
        .await
        .expect("claim");
    assert_eq!(
        due.iter()
            .filter(|d| d.payload["type"] == "webhook.test")
            .count(),
        1
    );
    // key.expiring: the enabled endpoints that hear every type (instance, member); the
    // one switched off by the 410 above hears nothing.
    let hear_all = [instance.id, members.id]
        .iter()
        .filter(|id| **id != disabled.id)
        .count();
    assert_eq!(
        due.iter()
            .filter(|d| d.payload["type"] == "key.expiring")
            .count(),
        hear_all
    );

    // The account secret replaces the secrets of the owner's own endpoints, with overlap.
    store
        .set_account_webhook_secret(
            member.id,
            "whsec_bmV3LXNlY3JldA==",
            50_000,
            &audit(12_000, "x"),
        )
        .await
        .expect("secret");
    let rotated = store
        .get_webhook(members.id)
        .await
        .expect("get")
        .expect("endpoint");
    assert_eq!(rotated.secret, "whsec_bmV3LXNlY3JldA==");
    // A write based on a read from before that change is refused, not applied over it.
    let mut stale = members.clone();
    stale.description = "stale".into();
    assert!(matches!(
        store
            .update_webhook(&stale, members.updated_at, &audit(12_500, "webhook.update"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    let mut fresh = rotated.clone();
    fresh.description = "fresh".into();
    fresh.updated_at = 12_600;
    assert!(
        store
            .update_webhook(&fresh, rotated.updated_at, &audit(12_600, "webhook.update"))
            .await
            .expect("update")
    );
    assert_eq!(rotated.signing_secrets(20_000).len(), 2);
    assert_eq!(rotated.signing_secrets(60_000).len(), 1);
    assert_eq!(
        store
            .account_webhook_secret(member.id)
            .await
            .expect("get")
            .as_deref(),
        Some("whsec_bmV3LXNlY3JldA==")
    );
    assert!(
        store
            .delete_webhook(members.id, &audit(13_000, "d"))
            .await
            .expect("delete")
    );
    assert!(
        store
            .list_deliveries(members.id, 10)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(store.list_webhooks(None).await.expect("list").len(), 5);
    assert_eq!(
        store
            .list_webhooks(Some((member.id, vec![project])))
            .await
            .expect("list")
            .len(),
        2
    );
}

#[tokio::test]
async fn sqlite_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path()).await.expect("open");
    conformance(&store).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path()).await.expect("open");
    accounts_conformance(&store).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path()).await.expect("open");
    webhook_conformance(&store).await;
}

#[tokio::test]
async fn sqlite_data_survives_reopen_and_two_handles_share_a_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = SqliteStore::open(dir.path()).await.expect("open");
    let second = SqliteStore::open(dir.path()).await.expect("open twice");
    let a = record(1, 1);
    first
        .insert_key(&a, None, &audit(1, "key.create"))
        .await
        .expect("insert");
    // The other handle (another process, in real life) sees the write through the feed.
    let changes = second.changes_since(0, 10).await.expect("changes");
    assert_eq!(changes[0].entity_id, a.id.to_string());
    first.close().await;
    second.close().await;
    let reopened = SqliteStore::open(dir.path()).await.expect("reopen");
    assert_eq!(reopened.get_key(a.id).await.expect("get"), Some(a));
}
