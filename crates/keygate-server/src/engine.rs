//! The verification hot path: the in-memory key index, instance settings and usage
//! counters, and the one entry point that turns a request's headers into a decision.
//!
//! Nothing here awaits or touches the store. The change feed (`feed.rs`) writes into the
//! index; the flusher (`flush.rs`) drains the usage ledger.

use crate::config::ServerConfig;
use crate::tokens::{self, TokenError, TokenKeys};
use axum::http::{HeaderMap, HeaderName};
use keygate_core::credential::{self, Extraction, Transport};
use keygate_core::limit::RouteLimits;
use keygate_core::route::{ProjectRule, RoutePolicy};
use keygate_core::settings::InstanceSettings;
use keygate_core::usage::{Outcome, UsageLedger};
use keygate_core::{
    Check, Decision, DecisionCode, IndexedKey, KeyIndex, KeyRecord, OwnerState, Role, UnixMillis,
    UserRecord, decide,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use uuid::Uuid;

/// Who a request acts as, once authenticated.
#[derive(Debug, Clone)]
pub enum Principal {
    /// An API key; `owner` is the user it belongs to (with their current role), `None`
    /// for the instance's own keys.
    ApiKey {
        key: Arc<IndexedKey>,
        owner: Option<(Uuid, Role)>,
        /// The key's limit states after this request (for `RateLimit` fields).
        limits: keygate_core::limit::LimitStatuses,
        /// The project the request acts in.
        project: Option<Uuid>,
    },
    /// A signed-in user, by JWT access token.
    User {
        id: Uuid,
        name: String,
        role: Role,
        family: String,
        /// The project named in the request, if the user may act in it.
        project: Option<Uuid>,
    },
    /// API access is switched off (`api_access_enabled = false`): no credential needed.
    Open,
}

impl Principal {
    /// True when the caller may act on everyone's keys, not only their own.
    pub fn acts_for_everyone(&self) -> bool {
        match self {
            Principal::ApiKey { owner, .. } => owner.is_none_or(|(_, role)| role == Role::Admin),
            Principal::User { role, .. } => *role == Role::Admin,
            Principal::Open => true,
        }
    }

    /// The user acting, if any.
    pub fn user_id(&self) -> Option<Uuid> {
        match self {
            Principal::ApiKey { owner, .. } => owner.map(|(id, _)| id),
            Principal::User { id, .. } => Some(*id),
            Principal::Open => None,
        }
    }

    /// How the audit log names the actor.
    pub fn actor(&self) -> String {
        match self {
            Principal::ApiKey {
                owner: Some((id, _)),
                ..
            }
            | Principal::User { id, .. } => format!("user:{id}"),
            Principal::ApiKey { owner: None, .. } => "instance".into(),
            Principal::Open => "anonymous".into(),
        }
    }

    /// The credential used, named without its secret.
    pub fn credential(&self) -> Option<String> {
        match self {
            Principal::ApiKey { key, .. } => Some(format!("key:{}", key.record.id)),
            Principal::User { family, .. } => Some(format!("session:{family}")),
            Principal::Open => None,
        }
    }
}

/// What switching API access off (`api_access_enabled = false`, changedetection.io's
/// toggle) does to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenAccessOff {
    /// It answers without a credential: the app's API behind the gateway, and keygate's
    /// read-only endpoints about the caller and the instance.
    Open,
    /// It still needs a credential holding its permission: the management API. Anyone
    /// who can reach the port could otherwise mint administrator keys that outlive the
    /// switch.
    Checked,
}

/// What the decision needs to know about the request besides the credential.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    pub client_ip: Option<std::net::IpAddr>,
    /// The project the request names.
    pub project: Option<&'a str>,
    /// The route acts inside a project (a user-level key must name one).
    pub project_required: bool,
    /// The route's own rate limits, replacing the key's there.
    pub route_limits: Option<RouteLimits<'a>>,
}

/// What a route policy asks of a request besides its scopes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteRules<'a> {
    /// A user-level key must name a project.
    pub project_required: bool,
    /// Rate limits in place of the key's own.
    pub limits: Option<RouteLimits<'a>>,
}

impl<'a> RouteRules<'a> {
    /// The rules of the policy at `index` among the route policies (none: no policy).
    pub fn of(policy: Option<(usize, &'a RoutePolicy)>) -> Self {
        policy.map_or_else(Self::default, |(index, policy)| Self {
            project_required: policy.project == ProjectRule::Required,
            limits: policy.route_limits(index),
        })
    }
}

/// Everything the engine is built from at start-up, read in one pass over the store.
pub struct Snapshot {
    pub keys: Vec<KeyRecord>,
    pub plans: Vec<keygate_store::Plan>,
    pub projects: Vec<keygate_store::Project>,
    /// This month's quota use per key: (month, [(key, used)]).
    pub quota_usage: (i32, Vec<(Uuid, u64)>),
    pub users: Vec<UserRecord>,
    pub settings: InstanceSettings,
    pub revoked_families: Vec<(String, UnixMillis)>,
    pub seq: u64,
}

/// Where this node is in the change feed.
#[derive(Debug, Default)]
pub struct FeedPosition {
    pub applied_seq: AtomicU64,
    pub store_seq: AtomicU64,
    pub last_poll_at: AtomicI64,
}

pub struct Engine {
    index: RwLock<KeyIndex>,
    /// Token families (sign-ins) revoked and not yet expired: their access tokens are
    /// refused until they expire.
    revoked_families: RwLock<HashMap<String, UnixMillis>>,
    pub tokens: TokenKeys,
    settings: RwLock<Arc<InstanceSettings>>,
    pub ledger: UsageLedger,
    pub feed: FeedPosition,
    api_key_header: HeaderName,
    project_header: HeaderName,
    transports: Vec<Transport>,
    /// Hot-path webhook events (rate limits, quotas, sign-in bursts).
    pub notifier: crate::webhooks::Notifier,
    /// The notifier's queue, taken by the writer task when the server starts.
    pub(crate) notifier_queue:
        std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<keygate_store::OutboxEvent>>>,
}

impl Engine {
    pub fn new(
        config: &ServerConfig,
        snapshot: Snapshot,
        tokens: TokenKeys,
        now: UnixMillis,
    ) -> Result<Self, String> {
        let Snapshot {
            keys,
            plans,
            projects,
            quota_usage,
            users,
            settings,
            revoked_families,
            seq,
        } = snapshot;
        let api_key_header = HeaderName::try_from(config.api_key_header.as_str())
            .map_err(|_| format!("{:?} is not a valid header name", config.api_key_header))?;
        // Plans first, so every key's limits resolve as it is inserted.
        let mut index = KeyIndex::default();
        for plan in plans {
            index.set_plan(plan.id, Some(plan.limits));
        }
        for key in keys {
            index.upsert(key);
        }
        for project in projects {
            index.set_project(
                project.id,
                Some(project.members.iter().map(|(user, _)| *user).collect()),
            );
        }
        // A key's quota use includes that of the keys it replaced (rotation carries it), so
        // each key's own rows count for it and for every key after it in its rotation chain.
        let (month, rows) = quota_usage;
        let mut totals: HashMap<Uuid, u64> = HashMap::new();
        for (key_id, used) in rows {
            let mut next = Some(key_id);
            for _ in 0..1000 {
                let Some(id) = next else { break };
                *totals.entry(id).or_default() += used;
                next = index.get_by_id(id).and_then(|k| k.record.rotated_to);
            }
        }
        for (key_id, used) in totals {
            if let Some(key) = index.get_by_id(key_id) {
                *key.usage.limiter() = keygate_core::limit::LimitState::with_quota_use(month, used);
            }
        }
        for user in &users {
            index.upsert_owner(user.id, OwnerState::from(user));
        }
        let (notifier, notifier_queue) =
            crate::webhooks::Notifier::new(config.webhooks.quota_threshold_percent);
        let engine = Self {
            notifier,
            notifier_queue: std::sync::Mutex::new(Some(notifier_queue)),
            index: RwLock::new(index),
            revoked_families: RwLock::new(revoked_families.into_iter().collect()),
            tokens,
            settings: RwLock::new(Arc::new(settings)),
            ledger: UsageLedger::default(),
            feed: FeedPosition::default(),
            api_key_header,
            project_header: HeaderName::try_from(config.project_header.as_str())
                .map_err(|_| format!("{:?} is not a valid header name", config.project_header))?,
            transports: config.transports.clone(),
        };
        engine.feed.applied_seq.store(seq, Ordering::Release);
        engine.feed.store_seq.store(seq, Ordering::Release);
        engine.feed.last_poll_at.store(now, Ordering::Release);
        Ok(engine)
    }

    pub fn index(&self) -> RwLockReadGuard<'_, KeyIndex> {
        // A panic while holding the lock cannot leave the map half-written in a way that
        // matters more than refusing every request would.
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn settings(&self) -> Arc<InstanceSettings> {
        Arc::clone(&self.settings.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Applies reloaded records (and removals) from the change feed in one write.
    pub fn apply_keys(&self, records: Vec<KeyRecord>, removed: &[Uuid]) {
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        for id in removed {
            index.remove(*id);
        }
        for record in records {
            index.upsert(record);
        }
    }

    /// Copies a rotated key's limiter state (rate-limit TATs, this month's quota use) to
    /// its replacement. The replacement's own unflushed count stays its own.
    pub fn carry_limits(&self, from: Uuid, to: Uuid) {
        let index = self.index();
        if let (Some(old), Some(new)) = (index.get_by_id(from), index.get_by_id(to)) {
            let carried = old.usage.limiter().carried();
            new.usage.limiter().inherit(carried);
        }
    }

    /// Applies a project change (`None`: the project is gone).
    pub fn apply_project(&self, id: Uuid, members: Option<std::collections::HashSet<Uuid>>) {
        self.index
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .set_project(id, members);
    }

    /// Applies a plan change (`None`: the plan is gone) to every key on it.
    pub fn apply_plan(&self, id: Uuid, limits: Option<keygate_core::limit::Limits>) {
        self.index
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .set_plan(id, limits);
    }

    pub fn apply_users(&self, users: Vec<UserRecord>, removed: &[Uuid]) {
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        for id in removed {
            index.remove_owner(*id);
        }
        for user in &users {
            index.upsert_owner(user.id, OwnerState::from(user));
        }
    }

    /// Replaces the deny list of revoked sign-ins, dropping entries already expired.
    pub fn apply_revoked_families(&self, families: Vec<(String, UnixMillis)>) {
        *self
            .revoked_families
            .write()
            .unwrap_or_else(PoisonError::into_inner) = families.into_iter().collect();
    }

    pub fn family_revoked(&self, family: &str) -> bool {
        self.revoked_families
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(family)
    }

    pub fn apply_settings(&self, settings: InstanceSettings) {
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(settings);
    }

    /// Authenticates a request to one of keygate's own endpoints from its headers and
    /// query string. `required_scopes` are checked after the key's state. A valid use is
    /// counted. `when_off` says whether switching API access off lets it through.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        required_scopes: &[&str],
        client_ip: Option<std::net::IpAddr>,
        when_off: WhenAccessOff,
        now: UnixMillis,
    ) -> Result<Principal, Box<Decision>> {
        self.authenticate_with(
            headers,
            query,
            required_scopes,
            client_ip,
            RouteRules::default(),
            when_off,
            now,
        )
    }

    /// Authenticates a request the gateway passes on (forward auth, the reverse proxy),
    /// on a route that may act inside a project. With API access switched off, no
    /// credential is needed.
    pub fn authenticate_route(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        required_scopes: &[&str],
        client_ip: Option<std::net::IpAddr>,
        route: RouteRules<'_>,
        now: UnixMillis,
    ) -> Result<Principal, Box<Decision>> {
        self.authenticate_with(
            headers,
            query,
            required_scopes,
            client_ip,
            route,
            WhenAccessOff::Open,
            now,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn authenticate_with(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        required_scopes: &[&str],
        client_ip: Option<std::net::IpAddr>,
        route: RouteRules<'_>,
        when_off: WhenAccessOff,
        now: UnixMillis,
    ) -> Result<Principal, Box<Decision>> {
        let settings = self.settings();
        let project = headers
            .get(&self.project_header)
            .and_then(|v| v.to_str().ok());
        if !settings.api_access_enabled && when_off == WhenAccessOff::Open {
            return Ok(Principal::Open);
        }
        // Query values are decoded into owned strings; borrowed below for the extraction.
        let query_values: Vec<String> = match query {
            Some(q) if settings.query_param_enabled && q.contains("apikey") => {
                form_urlencoded::parse(q.as_bytes())
                    .filter(|(name, _)| name == "apikey")
                    .map(|(_, value)| value.into_owned())
                    .collect()
            }
            _ => Vec::new(),
        };
        let extraction = credential::extract(&self.transports, |transport| match transport {
            Transport::Authorization => {
                Values::Header(headers.get_all(axum::http::header::AUTHORIZATION).iter())
            }
            Transport::ApiKeyHeader => Values::Header(headers.get_all(&self.api_key_header).iter()),
            Transport::QueryParam => Values::Query(query_values.iter()),
        });
        let decision = match extraction {
            Extraction::Found(presented) if credential::looks_like_jwt(presented.value) => {
                let outcome = self.verify_access_token(presented.value, required_scopes, project);
                count_outcome(match &outcome {
                    Ok(_) => DecisionCode::Valid,
                    Err(decision) => decision.code,
                });
                return outcome.map_err(Box::new);
            }
            Extraction::Found(presented) => self.decide_and_count(
                presented.value,
                presented.trimmed,
                required_scopes,
                Request {
                    client_ip,
                    project,
                    project_required: route.project_required,
                    route_limits: route.limits,
                },
                now,
            ),
            Extraction::Missing { hint } => {
                let hint = hint.unwrap_or_else(|| self.missing_hint(&settings, query));
                count_outcome(DecisionCode::Missing);
                refusal(DecisionCode::Missing, hint)
            }
            Extraction::Ambiguous { first, second } => {
                count_outcome(DecisionCode::Ambiguous);
                refusal(
                    DecisionCode::Ambiguous,
                    format!(
                        "credentials were found in both the {} and the {}, and they differ; send one",
                        describe(first, &self.api_key_header),
                        describe(second, &self.api_key_header)
                    ),
                )
            }
        };
        match decision.key.clone() {
            Some(key) if decision.is_valid() => Ok(Principal::ApiKey {
                key,
                owner: decision.owner,
                limits: decision.limits,
                project: decision.project,
            }),
            _ => Err(Box::new(decision)),
        }
    }

    /// Checks a JWT access token: signature and claims, then that its sign-in was not
    /// revoked and its user still exists, is enabled, and holds the permissions.
    // Private and on the refusal path only; `authenticate` boxes the error for callers.
    #[allow(clippy::result_large_err)]
    fn verify_access_token(
        &self,
        token: &str,
        required_scopes: &[&str],
        project: Option<&str>,
    ) -> Result<Principal, Decision> {
        let claims = self
            .tokens
            .verify(token, tokens::ACCESS)
            .map_err(|err| match err {
                TokenError::Expired => refusal(
                    DecisionCode::TokenExpired,
                    "the access token has expired; get a new one from /api/v1/auth/token/refresh"
                        .into(),
                ),
                TokenError::Invalid(why) => refusal(DecisionCode::InvalidToken, why.into()),
            })?;
        if self.family_revoked(&claims.sid) {
            return Err(refusal(
                DecisionCode::InvalidToken,
                "this sign-in was ended (logout, password change or a reused refresh token); sign in again".into(),
            ));
        }
        let id = Uuid::parse_str(&claims.sub).map_err(|_| {
            refusal(
                DecisionCode::InvalidToken,
                "the token's subject is not a user id".into(),
            )
        })?;
        let state = self.index().owner(id);
        let Some(state) = state else {
            return Err(refusal(
                DecisionCode::InvalidToken,
                "the token's user no longer exists".into(),
            ));
        };
        if state.disabled {
            return Err(refusal(
                DecisionCode::InvalidToken,
                "the token's user account is disabled".into(),
            ));
        }
        if let Some(missing) = required_scopes.iter().find(|needed| {
            !keygate_core::decision::owner_grants(state.role, needed)
                || !keygate_core::user::is_keygate_permission(needed)
        }) {
            return Err(Decision {
                limits: Default::default(),
                retry_after_ms: None,
                owner: None,
                project: None,
                code: DecisionCode::InsufficientPermissions,
                key: None,
                hint: Some(format!(
                    "the `{}` role does not include `{missing}`",
                    state.role.as_str()
                )),
                missing_scope: Some((*missing).to_string()),
            });
        }
        let project = match project.map(str::trim).filter(|p| !p.is_empty()) {
            None => None,
            Some(text) => {
                let allowed =
                    Uuid::parse_str(text)
                        .ok()
                        .filter(|p| match self.index().is_member(*p, id) {
                            None => false,
                            Some(member) => member || state.role == Role::Admin,
                        });
                match allowed {
                    Some(p) => Some(p),
                    None => {
                        return Err(refusal(
                            DecisionCode::ProjectForbidden,
                            "you are not a member of the project named in the request".into(),
                        ));
                    }
                }
            }
        };
        Ok(Principal::User {
            id,
            name: claims.name.unwrap_or_default(),
            role: state.role,
            family: claims.sid,
            project,
        })
    }

    /// Verifies a key given directly (the verify API). Counts a valid use.
    pub fn verify<S: AsRef<str>>(
        &self,
        key: &str,
        scopes: &[S],
        request: Request<'_>,
        now: UnixMillis,
    ) -> Decision {
        let (key, trimmed) = credential::trim_credential(key);
        if key.is_empty() {
            count_outcome(DecisionCode::Missing);
            return refusal(DecisionCode::Missing, "the `key` field is empty".into());
        }
        self.decide_and_count(key, trimmed, scopes, request, now)
    }

    fn decide_and_count<S: AsRef<str>>(
        &self,
        credential: &str,
        trimmed: bool,
        required_scopes: &[S],
        request: Request<'_>,
        now: UnixMillis,
    ) -> Decision {
        if trimmed {
            metrics::counter!("keygate_credential_whitespace_trimmed_total").increment(1);
        }
        let decision = {
            let index = self.index();
            decide(
                &index,
                &Check {
                    credential,
                    trimmed,
                    required_scopes,
                    now,
                    client_ip: request.client_ip,
                    project: request.project,
                    project_required: request.project_required,
                    route_limits: request.route_limits,
                },
            )
        };
        if let Some(key) = &decision.key {
            let outcome = match decision.code {
                DecisionCode::Valid => Outcome::Valid,
                DecisionCode::RateLimited => Outcome::RateLimited,
                DecisionCode::QuotaExceeded => Outcome::QuotaExceeded,
                _ => Outcome::Denied,
            };
            self.ledger
                .record_outcome(key.record.id, &key.usage, outcome, now);
        }
        count_outcome(decision.code);
        self.notifier.observe(&decision, now);
        decision
    }

    fn missing_hint(&self, settings: &InstanceSettings, query: Option<&str>) -> String {
        let query_ignored = !(settings.query_param_enabled
            && self.transports.contains(&Transport::QueryParam))
            && query.is_some_and(|q| q.split('&').any(|pair| pair.starts_with("apikey=")));
        if query_ignored {
            return format!(
                "the `apikey` query parameter is switched off on this instance; send the key as `Authorization: Bearer <key>` or in the `{}` header",
                self.api_key_header
            );
        }
        let mut hint = format!(
            "send the key as `Authorization: Bearer <key>` or in the `{}` header",
            self.api_key_header
        );
        if settings.query_param_enabled && self.transports.contains(&Transport::QueryParam) {
            hint.push_str(", or as the `apikey` query parameter");
        }
        hint
    }
}

/// The raw values of one transport, without boxing an iterator per request.
enum Values<'a> {
    Header(axum::http::header::ValueIter<'a, axum::http::HeaderValue>),
    Query(std::slice::Iter<'a, String>),
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        match self {
            // Header values that are not visible ASCII cannot be a credential; skip them.
            Values::Header(values) => values.find_map(|v| v.to_str().ok()),
            Values::Query(values) => values.next().map(String::as_str),
        }
    }
}

fn describe(transport: Transport, header: &HeaderName) -> String {
    match transport {
        Transport::Authorization => "Authorization header".into(),
        Transport::ApiKeyHeader => format!("{header} header"),
        Transport::QueryParam => "apikey query parameter".into(),
    }
}

fn refusal(code: DecisionCode, hint: String) -> Decision {
    Decision {
        code,
        key: None,
        hint: Some(hint),
        missing_scope: None,
        limits: Default::default(),
        retry_after_ms: None,
        owner: None,
        project: None,
    }
}

/// Counts a decision by code. The counter handles are made once (after the recorder is
/// installed): looking a labelled counter up per request is a hash and a lock.
fn count_outcome(code: DecisionCode) {
    static COUNTERS: std::sync::OnceLock<Vec<metrics::Counter>> = std::sync::OnceLock::new();
    let counters = COUNTERS.get_or_init(|| {
        DecisionCode::ALL
            .iter()
            .map(|c| metrics::counter!("keygate_decisions_total", "code" => c.as_str()))
            .collect()
    });
    if let Some(counter) = DecisionCode::ALL
        .iter()
        .position(|c| *c == code)
        .and_then(|i| counters.get(i))
    {
        counter.increment(1);
    }
}
