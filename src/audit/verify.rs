//! Proving the log intact: recompute the tree from the records, compare it with what the
//! log stored and signed, and with a checkpoint kept elsewhere.
//!
//! The recomputation is independent of the writer: it hashes the stored bytes of every
//! record in order (RFC 6962 leaf and node hashes via tlog_tiles), so a changed byte,
//! a missing record, a cut tail, or a history re-hashed and re-signed under another key
//! each fail here with the place they were found.

use super::Record;
use super::note::{VerifiedCheckpoint, open_checkpoint};
use tlog_tiles::{Hash, HashReader};

/// Why the log is not intact, first finding only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A record is missing from the sequence.
    #[error("record {index} is missing (the log jumps from {before} to {found})", before = index.wrapping_sub(1))]
    Missing {
        /// The first absent index.
        index: u64,
        /// The index found in its place.
        found: u64,
    },
    /// A record's bytes no longer hash to the leaf the log stored when it was written.
    #[error(
        "record {index} was changed after it was written (its hash differs from the stored leaf hash)"
    )]
    Changed {
        /// The first changed index.
        index: u64,
    },
    /// A record does not parse.
    #[error("record {index} is malformed: {reason}")]
    Malformed {
        /// Its index.
        index: u64,
        /// The parser's complaint.
        reason: String,
    },
    /// A checkpoint covers more records than the log holds.
    #[error(
        "the log was truncated: the {which} checkpoint covers {checkpoint} records, the log holds {size} (first missing index {size})"
    )]
    Truncated {
        /// `signed` (the log's own) or `kept` (the one given to compare with).
        which: &'static str,
        /// Records the checkpoint covers.
        checkpoint: u64,
        /// Records present.
        size: u64,
    },
    /// The records do not hash to a checkpoint's root: some record below its size was
    /// changed and the stored hashes rewritten to match.
    #[error("the records before index {checkpoint} do not match the {which} checkpoint's root: history below it was rewritten{first}",
        first = match .first_bad { Some(i) => format!(" (first differing record: {i})"), None => String::new() })]
    Rewritten {
        /// `signed` or `kept`.
        which: &'static str,
        /// The checkpoint's size.
        checkpoint: u64,
        /// The first record whose leaf differs from the kept leaves, when known.
        first_bad: Option<u64>,
    },
    /// A checkpoint's signature or form is wrong.
    #[error("the {which} checkpoint is not valid: {reason}")]
    Checkpoint {
        /// `signed` or `kept`.
        which: &'static str,
        /// Why.
        reason: String,
    },
    /// A record's inclusion proof does not lead from its bytes to the signed root: the
    /// record is not the one the signed log holds at that index.
    #[error(
        "record {index} is not proven in the signed log of {size} records (its bytes or its inclusion proof do not match the checkpoint's root)"
    )]
    NotIncluded {
        /// The record's index.
        index: u64,
        /// The signed checkpoint's size.
        size: u64,
    },
    /// The log file's bytes are not a sound store: it was changed outside writ.
    #[error("the log file is damaged: {0}")]
    Damaged(String),
    /// The log could not be read (permission denied, an I/O error, in use by a running
    /// writ) or the tree not recomputed: verification did not happen, and nothing is
    /// known about the log's integrity. Never reported as tampering.
    #[error("{0}")]
    Unverifiable(String),
}

impl VerifyError {
    /// Whether this is evidence that the log was tampered with (every finding but
    /// [`VerifyError::Unverifiable`]).
    pub fn is_tampering(&self) -> bool {
        !matches!(self, VerifyError::Unverifiable(_))
    }
}

impl From<super::at_rest::OpenError> for VerifyError {
    fn from(e: super::at_rest::OpenError) -> Self {
        match e {
            super::at_rest::OpenError::Unreadable(m) => VerifyError::Unverifiable(m),
            super::at_rest::OpenError::Damaged(m) => VerifyError::Damaged(m),
        }
    }
}

/// A failure of the tree math over hashes this module computed itself: a bug, not a
/// finding about the log.
fn tree_error(e: tlog_tiles::Error) -> VerifyError {
    VerifyError::Unverifiable(format!("recomputing the tree: {e}"))
}

/// What a successful verification proved.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// Records verified.
    pub size: u64,
    /// The recomputed root.
    pub root: Hash,
    /// The log's own latest checkpoint that matched, if one was given.
    pub signed: Option<VerifiedCheckpoint>,
    /// The kept checkpoint the log was proved consistent with, if one was given.
    pub kept: Option<VerifiedCheckpoint>,
}

/// Every stored hash of the recomputed tree, densely in tlog's stored-hash order.
#[derive(Default)]
struct MemoryHashes(Vec<Hash>);

impl HashReader for MemoryHashes {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&i| {
                self.0
                    .get(i as usize)
                    .copied()
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

/// The inputs of one verification.
pub struct Inputs<'a> {
    /// The log's verifier key (pinned by whoever verifies).
    pub vkey: &'a str,
    /// The log's own latest signed checkpoint, if it has one.
    pub signed: Option<&'a [u8]>,
    /// A checkpoint kept elsewhere, to prove the log still extends it.
    pub kept: Option<&'a [u8]>,
    /// The leaf hash the log stored for a record, when verifying the store itself.
    pub stored_leaf: Option<&'a dyn Fn(u64) -> Option<Hash>>,
}

/// Verifies the records, in index order, against the inputs. A record that could not be
/// read is passed as the error that says why.
pub fn verify(
    records: impl IntoIterator<Item = Result<(u64, Vec<u8>), VerifyError>>,
    inputs: &Inputs<'_>,
) -> Result<Verified, VerifyError> {
    let mut hashes = MemoryHashes::default();
    let mut leaves: Vec<Hash> = Vec::new();
    let mut size = 0u64;
    for item in records {
        let (index, bytes) = item?;
        if index != size {
            return Err(VerifyError::Missing {
                index: size,
                found: index,
            });
        }
        let leaf = tlog_tiles::record_hash(&bytes);
        if let Some(stored) = inputs.stored_leaf.and_then(|f| f(index))
            && stored != leaf
        {
            return Err(VerifyError::Changed { index });
        }
        if let Err(e) = Record::decode(&bytes) {
            return Err(VerifyError::Malformed {
                index,
                reason: e.to_string(),
            });
        }
        let new =
            tlog_tiles::stored_hashes_for_record_hash(index, leaf, &hashes).map_err(tree_error)?;
        hashes.0.extend(new);
        leaves.push(leaf);
        size += 1;
    }
    let root = tlog_tiles::tree_hash(size, &hashes).map_err(tree_error)?;
    let check = |which: &'static str, note: &[u8]| -> Result<VerifiedCheckpoint, VerifyError> {
        let cp = open_checkpoint(note, inputs.vkey)
            .map_err(|reason| VerifyError::Checkpoint { which, reason })?;
        if cp.size > size {
            return Err(VerifyError::Truncated {
                which,
                checkpoint: cp.size,
                size,
            });
        }
        let at = tlog_tiles::tree_hash(cp.size, &hashes).map_err(tree_error)?;
        if at != cp.root {
            return Err(VerifyError::Rewritten {
                which,
                checkpoint: cp.size,
                first_bad: None,
            });
        }
        // The standard check a monitor makes with only the two tree heads: a consistency
        // proof from the checkpoint's tree to the whole log.
        let proof = tlog_tiles::prove_tree(size, cp.size, &hashes).map_err(tree_error)?;
        tlog_tiles::check_tree(&proof, size, root, cp.size, cp.root).map_err(|e| {
            VerifyError::Checkpoint {
                which,
                reason: format!("no consistency with the log: {e}"),
            }
        })?;
        Ok(cp)
    };
    let signed = inputs.signed.map(|n| check("signed", n)).transpose()?;
    let kept = inputs.kept.map(|n| check("kept", n)).transpose()?;
    if let (Some(s), Some(k)) = (&signed, &kept)
        && s.origin != k.origin
    {
        return Err(VerifyError::Checkpoint {
            which: "kept",
            reason: format!("it is for log {:?}, not {:?}", k.origin, s.origin),
        });
    }
    Ok(Verified {
        size,
        root,
        signed,
        kept,
    })
}

/// Checks that `bytes` are record `index` of the signed log `checkpoint` names, by the
/// RFC 6962 inclusion proof `proof` ([`super::AuditLog::prove_inclusion`] at the
/// checkpoint's size): the leaf hash of the bytes, then the proof's path, must give the
/// checkpoint's root. It says nothing of the other records, which whoever checks need not
/// see (a tenant's auditor reads only the tenant's).
pub fn verify_inclusion(
    checkpoint: &VerifiedCheckpoint,
    index: u64,
    bytes: &[u8],
    proof: &[Hash],
) -> Result<(), VerifyError> {
    let not_included = VerifyError::NotIncluded {
        index,
        size: checkpoint.size,
    };
    if index >= checkpoint.size {
        return Err(not_included);
    }
    let leaf = tlog_tiles::record_hash(bytes);
    tlog_tiles::check_record(
        &proof.to_vec(),
        checkpoint.size,
        checkpoint.root,
        index,
        leaf,
    )
    .map_err(|_| not_included)?;
    Record::decode(bytes).map_err(|e| VerifyError::Malformed {
        index,
        reason: e.to_string(),
    })?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::audit::Kind;
    use crate::audit::note::LogKey;

    const ORIGIN: &str = "example.org/writ-audit";

    fn records(n: u64) -> Vec<(u64, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let r = Record::new(i as i64, Kind::AdminChange, "test", format!("op{i}"));
                (i, r.encode().unwrap())
            })
            .collect()
    }

    fn root_of(recs: &[(u64, Vec<u8>)]) -> Hash {
        let mut hashes = MemoryHashes::default();
        for (i, b) in recs {
            hashes
                .0
                .extend(tlog_tiles::stored_hashes(*i, b, &hashes).unwrap());
        }
        tlog_tiles::tree_hash(recs.len() as u64, &hashes).unwrap()
    }

    fn ok(recs: &[(u64, Vec<u8>)]) -> impl Iterator<Item = Result<(u64, Vec<u8>), VerifyError>> {
        recs.iter().cloned().map(Ok)
    }

    #[test]
    fn an_intact_log_verifies_against_signed_and_kept_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let key = LogKey::open_or_create(dir.path(), ORIGIN).unwrap();
        let all = records(37);
        let kept = key.checkpoint(ORIGIN, 20, root_of(&all[..20])).unwrap();
        let signed = key.checkpoint(ORIGIN, 37, root_of(&all)).unwrap();
        let inputs = Inputs {
            vkey: key.vkey(),
            signed: Some(&signed),
            kept: Some(&kept),
            stored_leaf: None,
        };
        let v = verify(ok(&all), &inputs).unwrap();
        assert_eq!(v.size, 37);
        assert_eq!(v.kept.unwrap().size, 20);
        // The RFC 6962 empty-tree root for an empty log.
        let empty = verify(
            std::iter::empty(),
            &Inputs {
                signed: None,
                kept: None,
                ..inputs
            },
        )
        .unwrap();
        assert_eq!(empty.root, tlog_tiles::EMPTY_HASH);
    }

    /// The stored hashes of the tree over `recs`.
    fn tree_of(recs: &[(u64, Vec<u8>)]) -> MemoryHashes {
        let mut hashes = MemoryHashes::default();
        for (i, b) in recs {
            hashes
                .0
                .extend(tlog_tiles::stored_hashes(*i, b, &hashes).unwrap());
        }
        hashes
    }

    #[test]
    fn a_record_is_proven_in_the_signed_log_by_its_inclusion_proof_alone() {
        let dir = tempfile::tempdir().unwrap();
        let key = LogKey::open_or_create(dir.path(), ORIGIN).unwrap();
        let all = records(13);
        let hashes = tree_of(&all);
        let note = key.checkpoint(ORIGIN, 13, root_of(&all)).unwrap();
        let cp = open_checkpoint(&note, key.vkey()).unwrap();
        let proof = |i: u64| tlog_tiles::prove_record(13, i, &hashes).unwrap();

        for (i, bytes) in &all {
            verify_inclusion(&cp, *i, bytes, &proof(*i)).unwrap();
        }
        // The proof of another index, or the right proof claimed for another index.
        assert_eq!(
            verify_inclusion(&cp, 5, &all[5].1, &proof(6)).unwrap_err(),
            VerifyError::NotIncluded { index: 5, size: 13 }
        );
        assert_eq!(
            verify_inclusion(&cp, 6, &all[5].1, &proof(5)).unwrap_err(),
            VerifyError::NotIncluded { index: 6, size: 13 }
        );
        // Altered bytes: one record rewritten, its proof unchanged.
        let altered = Record::new(5, Kind::AdminChange, "test", "mallory")
            .encode()
            .unwrap();
        let refused = verify_inclusion(&cp, 5, &altered, &proof(5)).unwrap_err();
        assert_eq!(refused, VerifyError::NotIncluded { index: 5, size: 13 });
        assert!(refused.is_tampering());
        // An index past the checkpoint, and a proof cut short.
        assert!(verify_inclusion(&cp, 13, &all[5].1, &proof(5)).is_err());
        let mut short = proof(5);
        short.pop();
        assert!(verify_inclusion(&cp, 5, &all[5].1, &short).is_err());
        // A checkpoint of a smaller tree: the proof at 13 does not reach its root.
        let smaller = key.checkpoint(ORIGIN, 12, root_of(&all[..12])).unwrap();
        let smaller = open_checkpoint(&smaller, key.vkey()).unwrap();
        assert!(verify_inclusion(&smaller, 5, &all[5].1, &proof(5)).is_err());
    }

    #[test]
    fn each_kind_of_tampering_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = LogKey::open_or_create(dir.path(), ORIGIN).unwrap();
        let all = records(10);
        let signed = key.checkpoint(ORIGIN, 10, root_of(&all)).unwrap();
        let base = Inputs {
            vkey: key.vkey(),
            signed: Some(&signed),
            kept: None,
            stored_leaf: None,
        };

        // A removed record.
        let mut gap = all.clone();
        gap.remove(4);
        assert_eq!(
            verify(ok(&gap), &base).unwrap_err(),
            VerifyError::Missing { index: 4, found: 5 }
        );

        // A truncated tail.
        assert_eq!(
            verify(ok(&all[..7]), &base).unwrap_err(),
            VerifyError::Truncated {
                which: "signed",
                checkpoint: 10,
                size: 7
            }
        );

        // A changed record, caught by its stored leaf hash.
        let mut changed = all.clone();
        changed[6].1 = Record::new(6, Kind::AdminChange, "test", "mallory")
            .encode()
            .unwrap();
        let leaves: Vec<Hash> = all
            .iter()
            .map(|(_, b)| tlog_tiles::record_hash(b))
            .collect();
        let stored = |i: u64| leaves.get(i as usize).copied();
        let with_leaves = Inputs {
            stored_leaf: Some(&stored),
            ..base
        };
        assert_eq!(
            verify(ok(&changed), &with_leaves).unwrap_err(),
            VerifyError::Changed { index: 6 }
        );
        // Without the stored leaves, the signed root still catches it.
        assert!(matches!(
            verify(
                ok(&changed),
                &Inputs {
                    stored_leaf: None,
                    ..with_leaves
                }
            )
            .unwrap_err(),
            VerifyError::Rewritten {
                which: "signed",
                checkpoint: 10,
                ..
            }
        ));

        // Re-hashed and re-signed by a forger: the log's key refuses the signature.
        let forger_dir = tempfile::tempdir().unwrap();
        let forger = LogKey::open_or_create(forger_dir.path(), ORIGIN).unwrap();
        let forged = forger.checkpoint(ORIGIN, 10, root_of(&changed)).unwrap();
        assert!(matches!(
            verify(
                ok(&changed),
                &Inputs {
                    signed: Some(&forged),
                    ..base
                }
            )
            .unwrap_err(),
            VerifyError::Checkpoint {
                which: "signed",
                ..
            }
        ));
        // Even if the forger also swapped the verifier key, a kept checkpoint still
        // catches the rewritten history.
        let kept = key.checkpoint(ORIGIN, 8, root_of(&all[..8])).unwrap();
        assert!(matches!(
            verify(
                ok(&changed),
                &Inputs {
                    vkey: forger.vkey(),
                    signed: Some(&forged),
                    kept: Some(&kept),
                    stored_leaf: None
                }
            )
            .unwrap_err(),
            VerifyError::Checkpoint { which: "kept", .. }
        ));
        assert!(matches!(
            verify(
                ok(&changed),
                &Inputs {
                    signed: None,
                    kept: Some(&kept),
                    ..base
                }
            )
            .unwrap_err(),
            VerifyError::Rewritten {
                which: "kept",
                checkpoint: 8,
                ..
            }
        ));

        // Garbage where a record was.
        let mut garbage = all.clone();
        garbage[2].1 = b"not json".to_vec();
        assert!(matches!(
            verify(
                ok(&garbage),
                &Inputs {
                    signed: None,
                    ..base
                }
            )
            .unwrap_err(),
            VerifyError::Malformed { index: 2, .. }
        ));
    }
}
