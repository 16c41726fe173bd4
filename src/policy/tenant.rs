//! Tenants: one writ deployment, several organisations, nothing that crosses
//! (docs/multi-tenant.md).
//!
//! A tenant has its own base trust domain and so its own band pair
//! (`investigate.<base>`, `remediate.<base>`), each with its own CA. Every profile,
//! incident, grant and playbook belongs to one tenant, and names are unique within it:
//! [`Key`] is how the policy finds an object. The deployment's own tenant,
//! [`DEFAULT_TENANT`], has the deployment's base: a deployment that never creates a tenant
//! is exactly what it was before tenants existed. Pure: the rules of naming and creating
//! tenants, no I/O.

use super::{PolicyError, Profile, Selector, check_name};
use serde::{Deserialize, Serialize};
use spiffe::TrustDomain;
use std::collections::BTreeSet;
use writ_verifier::Band;

/// The deployment's own tenant: objects stored before tenants existed are its, and an
/// admin command without `--tenant` acts in it.
pub const DEFAULT_TENANT: &str = "default";

/// Most tenants one deployment holds (each has two CAs that rotate).
pub const MAX_TENANTS: usize = 1024;

/// Where a tenant-scoped object lives in the policy: its tenant and its name (an
/// incident's or grant's id, a profile's or playbook's name).
pub type Key = (String, String);

/// The key of `name` in `tenant`.
pub fn key(tenant: &str, name: &str) -> Key {
    (tenant.to_owned(), name.to_owned())
}

/// Serde's default for the `tenant` field of objects stored before tenants existed.
pub fn default_tenant() -> String {
    DEFAULT_TENANT.to_owned()
}

/// Whether a tenant's objects may still be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantState {
    /// Issues identities.
    Active,
    /// Issues nothing, ever again; its incidents were closed when it was disabled.
    Disabled,
}

/// A tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Unique, never reused.
    pub name: String,
    /// Its base trust domain: its identities live in `investigate.<base>` and
    /// `remediate.<base>`.
    pub base: String,
    /// Active or disabled.
    pub state: TenantState,
    /// The operator who created it (`writ` for the default tenant).
    pub created_by: String,
    /// Seconds since the epoch.
    pub created_at: i64,
    /// Who disabled it.
    #[serde(default)]
    pub disabled_by: Option<String>,
    /// Seconds since the epoch.
    #[serde(default)]
    pub disabled_at: Option<i64>,
}

impl Tenant {
    /// The deployment's own tenant, on the deployment's `base`. Never stored: it exists
    /// in every deployment, made from the configuration.
    pub fn default_for(base: &TrustDomain) -> Tenant {
        Tenant {
            name: DEFAULT_TENANT.to_owned(),
            base: base.to_string(),
            state: TenantState::Active,
            created_by: "writ".to_owned(),
            created_at: 0,
            disabled_by: None,
            disabled_at: None,
        }
    }

    /// Whether identities may be issued in it.
    pub fn is_active(&self) -> bool {
        self.state == TenantState::Active
    }

    /// Its base trust domain, parsed.
    pub fn trust_domain(&self) -> Result<TrustDomain, PolicyError> {
        TrustDomain::new(&self.base).map_err(|e| {
            PolicyError::BadTenant(format!(
                "trust domain {:?}: {e}",
                self.base.chars().take(64).collect::<String>()
            ))
        })
    }
}

/// Checks that `new` may join `existing` tenants in a deployment whose own base is
/// `deployment_base`: a valid name not already taken, a valid base whose band trust
/// domains are no one else's. Two tenants on one base would share CAs' trust domains and
/// accept each other's identities; a tenant whose band trust domain is the deployment's
/// base would collide with the nodes' and services' CA.
pub fn check_new<'a>(
    new: &Tenant,
    existing: impl IntoIterator<Item = &'a Tenant>,
    deployment_base: &TrustDomain,
) -> Result<(), PolicyError> {
    check_name("tenant", &new.name)?;
    if new.name.len() > 63
        || !new
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(PolicyError::BadTenant(format!(
            "name {:?}: use 1-63 of [a-z0-9-]",
            new.name.chars().take(64).collect::<String>()
        )));
    }
    let base = new.trust_domain()?;
    // The names a base claims: itself and its two band trust domains. No two tenants (the
    // deployment's own base counting as one) may share any, or one tenant's trust domain
    // would be another's band.
    let claims = |base: &str| -> [String; 3] {
        [
            base.to_owned(),
            Band::Investigative.trust_domain_name(base),
            Band::Remediation.trust_domain_name(base),
        ]
    };
    let mine = claims(base.as_str());
    for td in &mine[1..] {
        TrustDomain::new(td)
            .map_err(|e| PolicyError::BadTenant(format!("band trust domain {td:?}: {e}")))?;
    }
    let taken = |theirs: [String; 3], whose: &str| -> Result<(), PolicyError> {
        match mine.iter().find(|td| theirs.contains(td)) {
            Some(td) => Err(PolicyError::BadTenant(format!(
                "trust domain {td} is {whose}"
            ))),
            None => Ok(()),
        }
    };
    taken(claims(deployment_base.as_str()), "the deployment's")?;
    let mut count = 0;
    for other in existing {
        count += 1;
        if other.name == new.name {
            return Err(PolicyError::BadTenant(format!(
                "tenant {:?} already exists (names are never reused)",
                new.name
            )));
        }
        taken(claims(&other.base), "another tenant's")?;
    }
    if count >= MAX_TENANTS {
        return Err(PolicyError::TooMany("tenants"));
    }
    Ok(())
}

/// Whether no workload can match both selector sets: for some kind a process has exactly
/// one of (its uid, user name, executable path, executable digest; in a pod its
/// namespace, service account, pod name and uid, container name, node, and each label
/// key's value), the two sets name different values. Container images are not such a
/// kind (a container is attested with its image reference and its image id). Gids are not such a kind (a process has several), and a uid against
/// a user name is not known to differ without reading /etc/passwd, so it counts as
/// overlapping: the answer errs towards "may overlap".
pub fn selectors_disjoint(a: &BTreeSet<Selector>, b: &BTreeSet<Selector>) -> bool {
    let of = |set: &BTreeSet<Selector>,
              kind: fn(&Selector) -> Option<String>|
     -> BTreeSet<String> { set.iter().filter_map(kind).collect() };
    let kinds: [fn(&Selector) -> Option<String>; 10] = [
        |s| match s {
            Selector::Uid(u) => Some(u.to_string()),
            _ => None,
        },
        |s| match s {
            Selector::User(u) => Some(u.clone()),
            _ => None,
        },
        |s| match s {
            Selector::Path(p) => Some(p.clone()),
            _ => None,
        },
        |s| match s {
            Selector::Sha256(d) => Some(d.clone()),
            _ => None,
        },
        |s| match s {
            Selector::K8sNamespace(v) => Some(v.clone()),
            _ => None,
        },
        |s| match s {
            Selector::K8sServiceAccount(v) => Some(v.clone()),
            _ => None,
        },
        |s| match s {
            Selector::K8sPodName(v) => Some(v.clone()),
            _ => None,
        },
        |s| match s {
            Selector::K8sPodUid(v) => Some(v.clone()),
            _ => None,
        },
        |s| match s {
            Selector::K8sContainerName(v) => Some(v.clone()),
            _ => None,
        },
        |s| match s {
            Selector::K8sNodeName(v) => Some(v.clone()),
            _ => None,
        },
    ];
    // Two values of one kind in one set match no process at all.
    let differ = |x: &BTreeSet<String>, y: &BTreeSet<String>| {
        x.len() > 1 || y.len() > 1 || (!x.is_empty() && !y.is_empty() && x != y)
    };
    let kind_differs = kinds
        .iter()
        .any(|kind| differ(&of(a, *kind), &of(b, *kind)));
    // A pod has one value per label key.
    let label_values = |set: &BTreeSet<Selector>, key: &str| -> BTreeSet<String> {
        set.iter()
            .filter_map(|s| match s {
                Selector::K8sPodLabel(k, v) if k == key => Some(v.clone()),
                _ => None,
            })
            .collect()
    };
    let label_differs = a.iter().chain(b).any(|s| match s {
        Selector::K8sPodLabel(key, _) => differ(&label_values(a, key), &label_values(b, key)),
        _ => false,
    });
    kind_differs || label_differs
}

/// Checks that `profile` selects no workload a profile of another tenant may select
/// ([`selectors_disjoint`]): a workload holds identities of one tenant only, so one
/// tenant's admin can never make another tenant's workload act under its own identities,
/// nor receive its bundles. The refusal names no other tenant or profile.
pub fn check_profile_tenant<'a>(
    profile: &Profile,
    others: impl IntoIterator<Item = &'a Profile>,
) -> Result<(), PolicyError> {
    let overlaps = others.into_iter().any(|other| {
        other.tenant != profile.tenant && !selectors_disjoint(&profile.selectors, &other.selectors)
    });
    if overlaps {
        return Err(PolicyError::BadTenant(format!(
            "profile {:?} may select workloads a profile of another tenant selects: give it a selector of its own (its own unix:uid, unix:path or unix:sha256, or k8s:ns)",
            profile.name
        )));
    }
    Ok(())
}

/// What each tenant's policy changes are held to (`[tenant_limits]`), so that one tenant's
/// spam (an automation opening incidents in a loop, an agent filing grant requests) cannot
/// fill the store or the registry's queue for the others (docs/multi-tenant.md,
/// "Fairness"). Revocations are never limited: closing, denying and revoking always go
/// through.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantLimits {
    /// Changes a tenant may make per second, sustained.
    pub changes_per_second: u32,
    /// Changes a tenant may make at once above that rate (an outage opening hundreds of
    /// incidents together fits in it).
    pub change_burst: u32,
    /// Incidents a tenant may have open at once.
    pub max_open_incidents: usize,
    /// Issuances (a CSR batch or a JWT each) in flight at once, for all tenants; free
    /// slots pass round-robin between tenants. Fewer: another tenant's CSR waits behind
    /// less of a storm; more: a storm's signatures and commits overlap more
    /// (docs/performance.md, "Fairness between tenants").
    pub issuance_slots: usize,
}

impl Default for TenantLimits {
    fn default() -> Self {
        TenantLimits {
            changes_per_second: 100,
            change_burst: 2_000,
            max_open_incidents: 5_000,
            issuance_slots: 8,
        }
    }
}

/// The highest value any `[tenant_limits]` setting takes.
const LIMIT_CEILING: u64 = 1_000_000;

impl TenantLimits {
    /// Checks every limit is at least one and at most a million.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let values = [
            u64::from(self.changes_per_second),
            u64::from(self.change_burst),
            self.max_open_incidents as u64,
            self.issuance_slots as u64,
        ];
        if values.iter().any(|v| *v == 0 || *v > LIMIT_CEILING) {
            return Err(PolicyError::BadText {
                what: "[tenant_limits] settings".into(),
                reason: format!("each limit must be between 1 and {LIMIT_CEILING}"),
            });
        }
        Ok(())
    }

    /// Refuses one more open incident in a tenant that has `open` already.
    pub fn check_open_incidents(&self, tenant: &str, open: usize) -> Result<(), String> {
        if open >= self.max_open_incidents {
            return Err(format!(
                "tenant {tenant:?} has {open} open incidents, its limit ([tenant_limits] max_open_incidents): close some first"
            ));
        }
        Ok(())
    }
}

/// A token bucket: one tenant's allowance of changes under [`TenantLimits`]. Full when
/// made; refilled at `changes_per_second` up to `change_burst`.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f64,
    at: std::time::SystemTime,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn full(limits: &TenantLimits, now: std::time::SystemTime) -> Bucket {
        Bucket {
            tokens: f64::from(limits.change_burst),
            at: now,
        }
    }

    /// Takes one change's token at `now`; refused with how long until one is there.
    pub fn take(
        &mut self,
        limits: &TenantLimits,
        now: std::time::SystemTime,
    ) -> Result<(), std::time::Duration> {
        let rate = f64::from(limits.changes_per_second.max(1));
        // A clock set back earns nothing.
        let elapsed = now
            .duration_since(self.at)
            .unwrap_or_default()
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(limits.change_burst));
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(std::time::Duration::from_secs_f64(
            (1.0 - self.tokens) / rate,
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tenant(name: &str, base: &str) -> Tenant {
        Tenant {
            name: name.into(),
            base: base.into(),
            state: TenantState::Active,
            created_by: "root".into(),
            created_at: 1,
            disabled_by: None,
            disabled_at: None,
        }
    }

    #[test]
    fn a_new_tenant_needs_its_own_name_and_trust_domains() {
        let deployment = TrustDomain::new("example.org").unwrap();
        let default = Tenant::default_for(&deployment);
        let acme = tenant("acme", "acme.example");
        let existing = [default.clone(), acme.clone()];
        assert_eq!(
            check_new(&tenant("globex", "globex.example"), &existing, &deployment),
            Ok(())
        );
        for (bad, why) in [
            (tenant("acme", "other.example"), "already exists"),
            (tenant("default", "other.example"), "already exists"),
            (tenant("globex", "acme.example"), "another tenant's"),
            (tenant("globex", "example.org"), "the deployment's"),
            (
                tenant("globex", "investigate.example.org"),
                "the deployment's",
            ),
            (
                tenant("globex", "remediate.acme.example"),
                "another tenant's",
            ),
            (tenant("Acme2", "a2.example"), "[a-z0-9-]"),
            (tenant("a/b", "a2.example"), "invalid tenant name"),
            (tenant("globex", "Not A Domain"), "trust domain"),
            (tenant("globex", ""), "trust domain"),
        ] {
            let err = check_new(&bad, &existing, &deployment)
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        // A tenant whose band trust domain is the deployment's own base.
        let odd = TrustDomain::new("investigate.corp.example").unwrap();
        let err = check_new(&tenant("corp", "corp.example"), [], &odd).unwrap_err();
        assert!(
            err.to_string()
                .contains("trust domain investigate.corp.example is the deployment's"),
            "{err}"
        );
    }

    fn selectors(list: &[&str]) -> BTreeSet<Selector> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn a_workload_is_selected_in_one_tenant_only() {
        let disjoint = |a: &[&str], b: &[&str]| selectors_disjoint(&selectors(a), &selectors(b));
        assert!(disjoint(&["unix:uid:2001"], &["unix:uid:2002"]));
        assert!(disjoint(
            &["unix:uid:1", "unix:gid:5"],
            &["unix:uid:2", "unix:gid:5"]
        ));
        assert!(disjoint(&["unix:path:/a"], &["unix:uid:1", "unix:path:/b"]));
        assert!(!disjoint(&["unix:uid:2001"], &["unix:uid:2001"]));
        assert!(
            !disjoint(&["unix:uid:2001"], &["unix:gid:7"]),
            "one process may have both"
        );
        assert!(
            !disjoint(&["unix:gid:1"], &["unix:gid:2"]),
            "a process has several gids"
        );
        assert!(
            !disjoint(&["unix:uid:2001"], &["unix:user:bob"]),
            "not known to differ"
        );
        assert!(disjoint(&["k8s:ns:a"], &["k8s:ns:b", "k8s:sa:x"]));
        assert!(disjoint(&["k8s:pod-uid:ab"], &["k8s:pod-uid:cd"]));
        assert!(disjoint(
            &["k8s:ns:a", "k8s:pod-label:app:x"],
            &["k8s:ns:a", "k8s:pod-label:app:y"]
        ));
        assert!(!disjoint(&["k8s:ns:a"], &["k8s:ns:a", "k8s:sa:x"]));
        assert!(
            !disjoint(&["k8s:pod-label:app:x"], &["k8s:pod-label:tier:y"]),
            "a pod has many labels"
        );
        assert!(
            !disjoint(&["k8s:container-image:a"], &["k8s:container-image:b"]),
            "a container is attested with its reference and its image id"
        );
        assert!(
            !disjoint(&["k8s:ns:a"], &["unix:uid:1"]),
            "a pod's process has a uid too"
        );

        let profile = |tenant: &str, sel: &[&str]| Profile {
            tenant: tenant.into(),
            name: "triage".into(),
            selectors: selectors(sel),
            bands: BTreeSet::from([writ_verifier::Band::Investigative]),
            scopes: BTreeSet::new(),
            service: false,
            created_at: 0,
        };
        let acme = profile("acme", &["unix:uid:2001"]);
        let others = [
            profile("globex", &["unix:uid:2002"]),
            profile("acme", &["unix:gid:9"]),
        ];
        assert_eq!(check_profile_tenant(&acme, &others), Ok(()));
        let err = check_profile_tenant(&profile("globex", &["unix:gid:4"]), [&acme])
            .unwrap_err()
            .to_string();
        assert!(err.contains("a profile of another tenant"), "{err}");
        assert!(
            !err.contains("acme"),
            "the refusal names the other tenant: {err}"
        );
    }

    #[test]
    fn old_objects_belong_to_the_default_tenant() {
        assert_eq!(default_tenant(), DEFAULT_TENANT);
        assert_eq!(
            key("acme", "INC-1"),
            ("acme".to_owned(), "INC-1".to_owned())
        );
        assert_ne!(key("acme", "INC-1"), key("globex", "INC-1"));
        let d = Tenant::default_for(&TrustDomain::new("example.org").unwrap());
        assert!(d.is_active());
        assert_eq!(d.trust_domain().unwrap().as_str(), "example.org");
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate_and_never_more() {
        let limits = TenantLimits {
            changes_per_second: 10,
            change_burst: 5,
            max_open_incidents: 1,
            issuance_slots: 1,
        };
        let t0 = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let mut b = Bucket::full(&limits, t0);
        for _ in 0..5 {
            assert!(b.take(&limits, t0).is_ok());
        }
        let wait = b.take(&limits, t0).unwrap_err();
        assert!(wait > std::time::Duration::ZERO && wait <= std::time::Duration::from_millis(100));
        // A tenth of a second later: one more, not two.
        let t1 = t0 + std::time::Duration::from_millis(100);
        assert!(b.take(&limits, t1).is_ok());
        assert!(b.take(&limits, t1).is_err());
        // A long pause refills to the burst, no further.
        let t2 = t1 + std::time::Duration::from_secs(3600);
        for _ in 0..5 {
            assert!(b.take(&limits, t2).is_ok());
        }
        assert!(b.take(&limits, t2).is_err());
        // A clock read out of order takes nothing it did not earn.
        assert!(b.take(&limits, t0).is_err());
    }

    #[test]
    fn limits_are_checked_and_open_incidents_are_capped() {
        assert!(TenantLimits::default().validate().is_ok());
        for bad in [
            TenantLimits {
                changes_per_second: 0,
                ..TenantLimits::default()
            },
            TenantLimits {
                change_burst: 0,
                ..TenantLimits::default()
            },
            TenantLimits {
                max_open_incidents: 0,
                ..TenantLimits::default()
            },
            TenantLimits {
                max_open_incidents: 2_000_000,
                ..TenantLimits::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let limits = TenantLimits {
            max_open_incidents: 2,
            ..TenantLimits::default()
        };
        assert!(limits.check_open_incidents("acme", 1).is_ok());
        let refused = limits.check_open_incidents("acme", 2).unwrap_err();
        assert!(
            refused.contains("\"acme\" has 2 open incidents"),
            "{refused}"
        );
        assert!(refused.contains("max_open_incidents"), "{refused}");
    }
}
