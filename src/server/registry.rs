//! The registry: profiles and incidents, durable in the store and served from memory.
//!
//! Every change is written to the store first, then published as a new
//! [`PolicySnapshot`] on a watch channel that the agent (and every Workload API stream)
//! follows. Issuance holds the read side of [`Registry::issuance_gate`] while it checks
//! and signs; closing an incident takes the write side, so once `close_incident`
//! returns, no SVID for that incident is being or will be signed.

use crate::policy::{Incident, IncidentState, PolicyError, PolicySnapshot, Profile};
use crate::store::{Store, StoreError};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;

/// Why a registry change was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The object is invalid.
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    /// A profile or incident with that name exists (incident ids are never reused).
    #[error("{what} {name:?} already exists")]
    AlreadyExists {
        /// Profile or incident.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// No such profile or incident.
    #[error("unknown {what} {name:?}")]
    NotFound {
        /// Profile or incident.
        what: &'static str,
        /// The name asked for.
        name: String,
    },
    /// The incident is already closed.
    #[error("incident {0:?} is already closed")]
    AlreadyClosed(String),
    /// The store failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Profiles and incidents.
pub struct Registry {
    store: Arc<Store>,
    snapshot: watch::Sender<Arc<PolicySnapshot>>,
    writer: Mutex<()>,
    gate: RwLock<()>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

impl Registry {
    /// Loads every profile and incident from the store.
    pub fn load(store: Arc<Store>) -> Result<Self, RegistryError> {
        let snapshot = PolicySnapshot {
            generation: 1,
            profiles: store
                .profiles()?
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect(),
            incidents: store
                .incidents()?
                .into_iter()
                .map(|i| (i.id.clone(), i))
                .collect(),
        };
        let (tx, _) = watch::channel(Arc::new(snapshot));
        Ok(Registry {
            store,
            snapshot: tx,
            writer: Mutex::new(()),
            gate: RwLock::new(()),
        })
    }

    /// The policy now.
    pub fn snapshot(&self) -> Arc<PolicySnapshot> {
        Arc::clone(&self.snapshot.borrow())
    }

    /// Follows every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<PolicySnapshot>> {
        self.snapshot.subscribe()
    }

    /// Held (shared) across an entitlement check and the signature that follows it.
    pub fn issuance_gate(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn change<T>(
        &self,
        f: impl FnOnce(&mut PolicySnapshot) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let _one_writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next = (*self.snapshot()).clone();
        let out = f(&mut next)?;
        next.generation += 1;
        let next = Arc::new(next);
        {
            // Wait out in-flight signatures; none start until the new policy is published.
            let _exclusive = self
                .gate
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            self.snapshot.send_replace(next);
        }
        Ok(out)
    }

    /// Creates a profile.
    pub fn create_profile(&self, profile: Profile) -> Result<Profile, RegistryError> {
        profile.validate()?;
        self.change(|policy| {
            if policy.profiles.contains_key(&profile.name) {
                return Err(RegistryError::AlreadyExists {
                    what: "profile",
                    name: profile.name.clone(),
                });
            }
            self.store.put_profile(&profile)?;
            policy
                .profiles
                .insert(profile.name.clone(), profile.clone());
            Ok(profile)
        })
    }

    /// Deletes a profile; its workloads lose their identities at once.
    pub fn delete_profile(&self, name: &str) -> Result<Profile, RegistryError> {
        self.change(|policy| {
            let Some(profile) = policy.profiles.get(name).cloned() else {
                return Err(RegistryError::NotFound {
                    what: "profile",
                    name: name.into(),
                });
            };
            self.store.delete_profile(name)?;
            policy.profiles.remove(name);
            Ok(profile)
        })
    }

    /// Opens an incident. Ids are never reused, even after closing.
    pub fn open_incident(&self, incident: Incident) -> Result<Incident, RegistryError> {
        incident.validate()?;
        self.change(|policy| {
            if policy.incidents.contains_key(&incident.id) {
                return Err(RegistryError::AlreadyExists {
                    what: "incident",
                    name: incident.id.clone(),
                });
            }
            let mut incident = incident;
            incident.state = IncidentState::Open;
            self.store.put_incident(&incident)?;
            policy
                .incidents
                .insert(incident.id.clone(), incident.clone());
            Ok(incident)
        })
    }

    /// Closes an incident for good: durable before the new policy is published, and no
    /// signature for it is in flight once this returns.
    pub fn close_incident(&self, id: &str, by: &str, now: i64) -> Result<Incident, RegistryError> {
        self.change(|policy| {
            let Some(current) = policy.incidents.get(id) else {
                return Err(RegistryError::NotFound {
                    what: "incident",
                    name: id.into(),
                });
            };
            if !current.is_open() {
                return Err(RegistryError::AlreadyClosed(id.into()));
            }
            let mut closed = current.clone();
            closed.state = IncidentState::Closed;
            closed.closed_by = Some(by.into());
            closed.closed_at = Some(now);
            self.store.put_incident(&closed)?;
            policy.incidents.insert(id.into(), closed.clone());
            Ok(closed)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::Severity;
    use std::collections::BTreeSet;
    use writ_verifier::Band;

    fn incident(id: &str) -> Incident {
        Incident {
            id: id.into(),
            title: "db down".into(),
            severity: Severity::Sev2,
            assigned: BTreeSet::from(["triage".to_string()]),
            scopes: BTreeSet::new(),
            state: IncidentState::Open,
            opened_by: "root".into(),
            opened_at: 1,
            closed_by: None,
            closed_at: None,
            max_lifetime_secs: 3600,
        }
    }

    #[test]
    fn closed_incidents_stay_closed_and_ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writ.redb");
        {
            let registry = Registry::load(Arc::new(Store::open(&path).unwrap())).unwrap();
            let mut rx = registry.subscribe();
            registry.open_incident(incident("INC-1")).unwrap();
            assert!(rx.has_changed().unwrap());
            let _ = rx.borrow_and_update();
            registry.close_incident("INC-1", "root", 2).unwrap();
            assert!(rx.has_changed().unwrap());
            assert!(matches!(
                registry.close_incident("INC-1", "root", 3),
                Err(RegistryError::AlreadyClosed(_))
            ));
        }
        let registry = Registry::load(Arc::new(Store::open(&path).unwrap())).unwrap();
        assert!(!registry.snapshot().incidents["INC-1"].is_open());
        assert!(matches!(
            registry.open_incident(incident("INC-1")),
            Err(RegistryError::AlreadyExists { .. })
        ));
        assert!(matches!(
            registry.close_incident("nope", "root", 3),
            Err(RegistryError::NotFound { .. })
        ));
    }

    #[test]
    fn invalid_profiles_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let registry =
            Registry::load(Arc::new(Store::open(&dir.path().join("w.redb")).unwrap())).unwrap();
        let before = registry.snapshot().generation;
        let bad = Profile {
            name: "x".into(),
            selectors: BTreeSet::new(),
            bands: BTreeSet::from([Band::Investigative]),
            scopes: BTreeSet::new(),
            service: false,
            created_at: 0,
        };
        assert!(registry.create_profile(bad).is_err());
        assert_eq!(registry.snapshot().generation, before);
        assert!(registry.snapshot().profiles.is_empty());
    }
}
