//! Leader election on a `coordination.k8s.io/v1` Lease, so that two replicas are safe:
//! only the holder runs the controllers; the others wait as hot standbys (they still
//! serve health, metrics and webhooks).
//!
//! kube 5 has no Lease helper, so this is the client-go protocol in small: read the
//! Lease; take it when it is free, ours, or not renewed within its duration; write it
//! back with the `resourceVersion` read, so of two replicas racing for an expired Lease
//! exactly one wins (the other gets 409 Conflict). The holder renews every
//! `renew_every`; when it cannot renew for `renew_deadline` (shorter than the lease
//! duration) or finds another holder, leadership is lost and the process exits so the
//! pod restarts clean. On shutdown the Lease is released so a standby takes over at
//! once instead of after the lease duration.
//!
//! Expiry is judged from the Lease's `renewTime` against the local clock, so it
//! assumes the nodes' clocks agree to well within the lease duration (NTP).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt as _};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Name of the Lease.
pub const LEASE_NAME: &str = "openvox-code-controller";

/// Why leader election could not run.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// A call to the API server failed.
    #[error("{action} Lease: {source}")]
    Kube {
        /// `get`, `create`, `update`.
        action: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// Where the Lease is, who we are, and the timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How long the holder keeps leading without a successful renewal; shorter than
    /// `lease_duration`, so it stops before anyone else may start.
    pub renew_deadline: Duration,
    /// How often the holder renews and a standby looks again.
    pub renew_every: Duration,
}

impl LeaseSettings {
    /// The standard timing: 15 s lease, renewed every 5 s, given up after 10 s without
    /// a successful renewal.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            name: LEASE_NAME.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            renew_every: Duration::from_secs(5),
        }
    }
}

/// This replica's identity: `POD_NAME` (set by the chart from the downward API), else
/// the host name and process id, so two local processes never share one.
pub fn identity_from_env() -> String {
    if let Some(pod) = std::env::var("POD_NAME").ok().filter(|p| !p.is_empty()) {
        return pod;
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "openvox-code-controller".into());
    format!("{host}_{}", std::process::id())
}

/// The Lease's namespace: the flag, else `POD_NAMESPACE` (set by the chart), else the
/// client's default namespace (the kubeconfig context's, or the service account's).
pub fn namespace_from(flag: Option<&str>, client: &Client) -> String {
    flag.filter(|n| !n.is_empty())
        .map(String::from)
        .or_else(|| {
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| client.default_namespace().to_string())
}

/// Whether `identity` may take (or keep) the Lease whose spec is `lease` at `now`:
/// there is none, it has no holder, it is ours, or it was not renewed within its
/// duration.
pub fn should_acquire(lease: Option<&LeaseSpec>, now: Timestamp, identity: &str) -> bool {
    let Some(spec) = lease else {
        return true;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(holder) if holder == identity => true,
        Some(_) => expired(spec, now),
    }
}

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let duration =
        SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0)));
    match renewed.0.checked_add(duration) {
        Ok(until) => until <= now,
        Err(_) => false,
    }
}

/// The spec to write when `identity` takes or renews the Lease at `now`.
pub fn held_spec(
    old: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    duration: Duration,
) -> LeaseSpec {
    let old_holder = old
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty());
    let renewing = old_holder == Some(identity);
    let transitions = old.and_then(|s| s.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX).max(1)),
        acquire_time: if renewing {
            old.and_then(|s| s.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if old_holder.is_some() && !renewing {
            transitions.saturating_add(1)
        } else {
            transitions
        }),
        ..old.cloned().unwrap_or_default()
    }
}

/// The spec to write when the holder gives the Lease up: no holder, and a one-second
/// duration so that clients reading only the times see it free at once (as client-go
/// does).
pub fn released_spec(old: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(now)),
        ..old.clone()
    }
}

/// The outcome of one attempt to take or renew the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// We hold it now.
    Held,
    /// Someone else holds it and it has not expired.
    HeldBy(String),
    /// Someone wrote the Lease between our read and our write; look again.
    Conflict,
}

/// Takes, keeps and gives up the Lease.
#[derive(Clone, Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
}

impl LeaderElector {
    /// An elector for `settings.name` in `settings.namespace`.
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// One attempt to take or renew the Lease.
    pub async fn try_acquire(&self) -> Result<Attempt, LeaderError> {
        let s = &self.settings;
        let now = Timestamp::now();
        let current = self
            .api
            .get_opt(&s.name)
            .await
            .map_err(|source| LeaderError::Kube {
                action: "get",
                source,
            })?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(s.name.clone()),
                    namespace: Some(s.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(held_spec(None, &s.identity, now, s.lease_duration)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
                Err(source) => Err(LeaderError::Kube {
                    action: "create",
                    source,
                }),
            };
        };
        if !should_acquire(lease.spec.as_ref(), now, &s.identity) {
            let holder = lease
                .spec
                .and_then(|spec| spec.holder_identity)
                .unwrap_or_default();
            return Ok(Attempt::HeldBy(holder));
        }
        lease.spec = Some(held_spec(
            lease.spec.as_ref(),
            &s.identity,
            now,
            s.lease_duration,
        ));
        // The resourceVersion read above makes this a compare-and-swap.
        match self
            .api
            .replace(&lease.name_any(), &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Held),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
            Err(source) => Err(LeaderError::Kube {
                action: "update",
                source,
            }),
        }
    }

    /// Waits until this replica holds the Lease, then keeps renewing it in the
    /// background. API errors while waiting are logged and retried.
    pub async fn acquire(self) -> Leadership {
        let mut last_holder: Option<String> = None;
        loop {
            match self.try_acquire().await {
                Ok(Attempt::Held) => break,
                Ok(Attempt::HeldBy(holder)) => {
                    if last_holder.as_deref() != Some(holder.as_str()) {
                        info!(lease = %self.settings.name, %holder, "waiting for the leader lease");
                        last_holder = Some(holder);
                    }
                }
                Ok(Attempt::Conflict) => {}
                Err(e) => warn!("leader election: {e}"),
            }
            tokio::time::sleep(self.settings.renew_every).await;
        }
        info!(lease = %self.settings.name, identity = %self.settings.identity, "became the leader");
        Leadership::start(self)
    }

    /// Gives the Lease up if we still hold it.
    pub async fn release(&self) -> Result<(), LeaderError> {
        let s = &self.settings;
        let Some(mut lease) =
            self.api
                .get_opt(&s.name)
                .await
                .map_err(|source| LeaderError::Kube {
                    action: "get",
                    source,
                })?
        else {
            return Ok(());
        };
        let Some(spec) = lease
            .spec
            .as_ref()
            .filter(|spec| spec.holder_identity.as_deref() == Some(s.identity.as_str()))
        else {
            return Ok(());
        };
        lease.spec = Some(released_spec(spec, Timestamp::now()));
        match self
            .api
            .replace(&s.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            // Someone else wrote it meanwhile: it is not ours to release any more.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(source) => Err(LeaderError::Kube {
                action: "update",
                source,
            }),
        }
    }
}

/// Holding the Lease: renewed in the background until lost or released.
#[derive(Debug)]
pub struct Leadership {
    lost: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    elector: LeaderElector,
}

impl Leadership {
    fn start(elector: LeaderElector) -> Self {
        let (lost_tx, lost) = watch::channel(false);
        let (stop, mut stop_rx) = watch::channel(false);
        let renewer = elector.clone();
        let task = tokio::spawn(async move {
            let s = renewer.settings.clone();
            let mut last_renewal = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(s.renew_every) => {}
                    _ = stop_rx.wait_for(|stop| *stop) => return,
                }
                match renewer.try_acquire().await {
                    Ok(Attempt::Held) => last_renewal = tokio::time::Instant::now(),
                    Ok(Attempt::HeldBy(holder)) => {
                        warn!(%holder, "the leader lease was taken over");
                        let _ = lost_tx.send(true);
                        return;
                    }
                    Ok(Attempt::Conflict) => {}
                    Err(e) => warn!("renewing the leader lease: {e}"),
                }
                if last_renewal.elapsed() >= s.renew_deadline {
                    warn!(
                        deadline = ?s.renew_deadline,
                        "the leader lease was not renewed in time"
                    );
                    let _ = lost_tx.send(true);
                    return;
                }
            }
        });
        Self {
            lost,
            stop,
            task,
            elector,
        }
    }

    /// Resolves when leadership is lost: another replica holds the Lease, or it could
    /// not be renewed within the renew deadline. Never resolves while leading.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        // An error means the renewer is gone, which only happens once it is lost.
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// Whether leadership has been lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Stops renewing and gives the Lease up, so a standby takes over at once. Call it
    /// only after the controllers have stopped.
    pub async fn release(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if *self.lost.borrow() {
            return;
        }
        match self.elector.release().await {
            Ok(()) => info!(lease = %self.elector.settings.name, "released the leader lease"),
            Err(e) => warn!("releasing the leader lease: {e}"),
        }
    }

    /// Stops renewing without giving the Lease up, as a crashed process would; a
    /// standby takes over once the lease duration has passed. For tests.
    pub fn abandon(self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn lease(holder: Option<&str>, renewed: Option<i64>, duration: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            renew_time: renewed.map(|s| MicroTime(at(s))),
            lease_duration_seconds: duration,
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn should_acquire_follows_holder_and_expiry() {
        // (case, lease, now, expected) for identity "me".
        let cases: &[(&str, Option<LeaseSpec>, i64, bool)] = &[
            ("no lease yet", None, 0, true),
            (
                "lease without holder",
                Some(lease(None, Some(0), Some(15))),
                1,
                true,
            ),
            (
                "lease with an empty holder",
                Some(lease(Some(""), Some(0), Some(15))),
                1,
                true,
            ),
            (
                "our own lease, fresh",
                Some(lease(Some("me"), Some(0), Some(15))),
                1,
                true,
            ),
            (
                "our own lease, expired",
                Some(lease(Some("me"), Some(0), Some(15))),
                100,
                true,
            ),
            (
                "another holder, fresh",
                Some(lease(Some("other"), Some(0), Some(15))),
                5,
                false,
            ),
            (
                "another holder, one second before expiry",
                Some(lease(Some("other"), Some(0), Some(15))),
                14,
                false,
            ),
            (
                "another holder, at expiry",
                Some(lease(Some("other"), Some(0), Some(15))),
                15,
                true,
            ),
            (
                "another holder, long expired",
                Some(lease(Some("other"), Some(0), Some(15))),
                60,
                true,
            ),
            (
                "another holder, released (1 s)",
                Some(lease(Some("other"), Some(0), Some(1))),
                1,
                true,
            ),
            (
                "another holder, never renewed",
                Some(lease(Some("other"), None, Some(15))),
                0,
                true,
            ),
            (
                "another holder, no duration",
                Some(lease(Some("other"), Some(0), None)),
                0,
                true,
            ),
            (
                "another holder, renewed in our future (clock skew)",
                Some(lease(Some("other"), Some(10), Some(15))),
                0,
                false,
            ),
        ];
        for (case, spec, now, expected) in cases {
            assert_eq!(
                should_acquire(spec.as_ref(), at(*now), "me"),
                *expected,
                "{case}"
            );
        }
    }

    #[test]
    fn the_acquire_time_counts_when_the_renew_time_is_missing() {
        let spec = LeaseSpec {
            holder_identity: Some("other".into()),
            acquire_time: Some(MicroTime(at(0))),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        };
        assert!(!should_acquire(Some(&spec), at(5), "me"));
        assert!(should_acquire(Some(&spec), at(20), "me"));
    }

    #[test]
    fn taking_a_lease_from_another_holder_counts_a_transition() {
        let old = lease(Some("other"), Some(0), Some(15));
        let new = held_spec(Some(&old), "me", at(20), Duration::from_secs(15));
        assert_eq!(new.holder_identity.as_deref(), Some("me"));
        assert_eq!(new.lease_transitions, Some(1));
        assert_eq!(new.acquire_time, Some(MicroTime(at(20))));
        assert_eq!(new.renew_time, Some(MicroTime(at(20))));
        assert_eq!(new.lease_duration_seconds, Some(15));
    }

    #[test]
    fn renewing_keeps_the_acquire_time_and_the_transition_count() {
        let mut old = lease(Some("me"), Some(0), Some(15));
        old.acquire_time = Some(MicroTime(at(-100)));
        old.lease_transitions = Some(3);
        let new = held_spec(Some(&old), "me", at(5), Duration::from_secs(15));
        assert_eq!(new.acquire_time, Some(MicroTime(at(-100))));
        assert_eq!(new.lease_transitions, Some(3));
        assert_eq!(new.renew_time, Some(MicroTime(at(5))));
    }

    #[test]
    fn the_first_holder_starts_without_transitions() {
        let new = held_spec(None, "me", at(0), Duration::from_secs(15));
        assert_eq!(new.lease_transitions, Some(0));
        let after_release = held_spec(
            Some(&lease(None, Some(0), Some(1))),
            "me",
            at(1),
            Duration::from_secs(15),
        );
        assert_eq!(after_release.lease_transitions, Some(0));
    }

    #[test]
    fn a_released_lease_is_free_for_anyone_at_once() {
        let held = held_spec(None, "me", at(0), Duration::from_secs(15));
        let released = released_spec(&held, at(3));
        assert_eq!(released.holder_identity, None);
        assert!(should_acquire(Some(&released), at(3), "other"));
    }
}
