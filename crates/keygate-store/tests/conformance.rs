//! The store conformance suite: the same behaviour asked of every backend.

use keygate_core::settings::InstanceSettings;
use keygate_core::usage::UsageDelta;
use keygate_core::{KeyOrigin, KeyRecord, key_format};
use keygate_store::{Entity, KeyPage, KeyUpdate, SqliteStore, Store, StoreError};
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
        created_at: at,
        updated_at: at,
        expires_at: None,
        revoked_at: None,
        rotated_to: None,
        last_used_at: None,
        usage_count: 0,
    }
}

async fn conformance(store: &dyn Store) {
    assert_eq!(store.latest_seq().await.expect("seq"), 0);
    let a = record(1, 1000);
    store.insert_key(&a).await.expect("insert");
    assert_eq!(store.get_key(a.id).await.expect("get"), Some(a.clone()));

    // Same hash twice is a conflict, not a second row.
    let mut dup = record(1, 1001);
    dup.id = Uuid::now_v7();
    assert!(matches!(
        store.insert_key(&dup).await,
        Err(StoreError::Conflict(_))
    ));

    // Updates touch only the named fields; null expiry clears.
    let update = KeyUpdate {
        name: Some("renamed".into()),
        expires_at: Some(Some(5000)),
        ..Default::default()
    };
    let updated = store
        .update_key(a.id, &update, 2000)
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
        .update_key(a.id, &cleared, 2001)
        .await
        .expect("update")
        .expect("exists");
    assert_eq!(updated.expires_at, None);
    assert!(
        store
            .update_key(Uuid::now_v7(), &cleared, 1)
            .await
            .expect("update")
            .is_none()
    );

    // Revocation is idempotent.
    let revoked = store
        .revoke_key(a.id, 3000)
        .await
        .expect("revoke")
        .expect("exists");
    assert_eq!(revoked.revoked_at, Some(3000));
    let again = store
        .revoke_key(a.id, 4000)
        .await
        .expect("revoke")
        .expect("exists");
    assert_eq!(again.revoked_at, Some(3000));

    // Rotation stores the replacement and links the old key; revoked keys refuse.
    let b = record(2, 5000);
    let c = record(3, 6000);
    store.insert_key(&b).await.expect("insert");
    let old = store
        .rotate_key(b.id, &c, 9000, 6000)
        .await
        .expect("rotate")
        .expect("exists");
    assert_eq!((old.expires_at, old.rotated_to), (Some(9000), Some(c.id)));
    assert!(matches!(
        store.rotate_key(b.id, &record(4, 1), 1, 1).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.rotate_key(a.id, &record(5, 1), 1, 1).await,
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
        },
        UsageDelta {
            key_id: Uuid::now_v7(),
            uses: 1,
            last_used_at: 1,
        },
    ];
    store.add_usage(&deltas).await.expect("usage");
    store
        .add_usage(&[UsageDelta {
            key_id: c.id,
            uses: 2,
            last_used_at: 6500,
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
    };
    store.put_settings(&off, 9000).await.expect("put");
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

#[tokio::test]
async fn sqlite_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path()).await.expect("open");
    conformance(&store).await;
}

#[tokio::test]
async fn sqlite_data_survives_reopen_and_two_handles_share_a_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = SqliteStore::open(dir.path()).await.expect("open");
    let second = SqliteStore::open(dir.path()).await.expect("open twice");
    let a = record(1, 1);
    first.insert_key(&a).await.expect("insert");
    // The other handle (another process, in real life) sees the write through the feed.
    let changes = second.changes_since(0, 10).await.expect("changes");
    assert_eq!(changes[0].entity_id, a.id.to_string());
    first.close().await;
    second.close().await;
    let reopened = SqliteStore::open(dir.path()).await.expect("reopen");
    assert_eq!(reopened.get_key(a.id).await.expect("get"), Some(a));
}
