//! The audit log several servers share, in PostgreSQL (docs/ha.md, "The audit log";
//! the scheme is [`crate::audit::shared`]'s, the tables are migration 3).
//!
//! * `audit_next` hands out indexes; a reservation is one statement that moves it and
//!   records the range with the database's clock (`audit_ranges`).
//! * Records are inserted in one statement per batch: a taken index (a place another
//!   server closed because this one was too slow) fails the whole batch.
//! * The tree's head row is its lock: an extension takes it with `SKIP LOCKED`, so two
//!   servers never extend at once and neither waits for the other.

use super::StoreError;
use super::postgres::{Postgres, pg_err, pool_err};
use crate::audit::AuditError;
use crate::audit::shared::{EXTEND_LIMIT, ExtendFn, SharedLog, Step};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tlog_tiles::Hash;

fn audit_err(e: StoreError) -> AuditError {
    AuditError::Store(e.to_string())
}

fn index(i: u64) -> Result<i64, StoreError> {
    i64::try_from(i).map_err(|_| StoreError::Db("audit: index out of range".into()))
}

fn unsigned(i: i64) -> u64 {
    u64::try_from(i).unwrap_or(0)
}

/// The most stored hashes one extension may ask for before it is called a bug: the tree's
/// right edge is at most 64 subtrees, asked for a few at a time.
const MAX_HASH_ROUNDS: usize = 128;

impl SharedLog for Postgres {
    fn reserve(&self, owner: &str, count: u64) -> Result<u64, AuditError> {
        let owner = owner.to_owned();
        let count = index(count).map_err(audit_err)?;
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let first: i64 = client
                .query_one(
                    "WITH taken AS (
                         UPDATE audit_next SET next = next + $2 RETURNING next - $2 AS start)
                     INSERT INTO audit_ranges (start, stop, owner, reserved_at)
                     SELECT start, start + $2, $1, clock_timestamp() FROM taken
                     RETURNING start",
                    &[&owner, &count],
                )
                .await
                .map_err(pg_err)?
                .get(0);
            Ok(unsigned(first))
        })
        .map_err(audit_err)
    }

    fn insert(&self, records: Vec<(u64, Vec<u8>)>) -> Result<(), AuditError> {
        let mut indexes = Vec::with_capacity(records.len());
        let mut bodies = Vec::with_capacity(records.len());
        for (i, body) in records {
            indexes.push(index(i).map_err(audit_err)?);
            bodies.push(body);
        }
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            client
                .execute(
                    "INSERT INTO audit_records (idx, body)
                     SELECT * FROM unnest($1::bigint[], $2::bytea[])",
                    &[&indexes, &bodies],
                )
                .await
                .map_err(pg_err)?;
            Ok(())
        })
        .map_err(audit_err)
    }

    fn void(&self, from: u64, to: u64, void: Vec<u8>) -> Result<(), AuditError> {
        let (from, to) = (
            index(from).map_err(audit_err)?,
            index(to).map_err(audit_err)?,
        );
        self.run(move |pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = client.transaction().await.map_err(pg_err)?;
            tx.execute(
                "INSERT INTO audit_records (idx, body)
                 SELECT g, $3 FROM generate_series($1::bigint, $2::bigint - 1) AS g
                 ON CONFLICT (idx) DO NOTHING",
                &[&from, &to, &void],
            )
            .await
            .map_err(pg_err)?;
            // Reservations now wholly filled are done with.
            tx.execute(
                "DELETE FROM audit_ranges WHERE start >= $1 AND stop <= $2",
                &[&from, &to],
            )
            .await
            .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)
        })
        .map_err(audit_err)
    }

    fn abandoned(&self, older_than: Duration) -> Result<Vec<(u64, u64, String)>, AuditError> {
        let seconds = older_than.as_secs_f64();
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let rows = client
                .query(
                    "SELECT start, stop, owner FROM audit_ranges
                     WHERE reserved_at < clock_timestamp() - make_interval(secs => $1)
                     ORDER BY start LIMIT 64",
                    &[&seconds],
                )
                .await
                .map_err(pg_err)?;
            Ok(rows
                .into_iter()
                .map(|r| (unsigned(r.get(0)), unsigned(r.get(1)), r.get(2)))
                .collect())
        })
        .map_err(audit_err)
    }

    fn extend(&self, step: Arc<ExtendFn>) -> Result<Option<u64>, AuditError> {
        self.run(move |pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let Some(head) = tx
                .query_opt(
                    "SELECT size, checkpoint FROM audit_head FOR UPDATE SKIP LOCKED",
                    &[],
                )
                .await
                .map_err(pg_err)?
            else {
                return Ok(None);
            };
            let size: i64 = head.get(0);
            let signed: Option<Vec<u8>> = head.get(1);
            let limit = EXTEND_LIMIT as i64;
            let rows = tx
                .query(
                    "SELECT idx, body FROM audit_records WHERE idx >= $1 ORDER BY idx LIMIT $2",
                    &[&size, &limit],
                )
                .await
                .map_err(pg_err)?;
            let mut records = Vec::new();
            for row in rows {
                let i: i64 = row.get(0);
                if i != size + records.len() as i64 {
                    break;
                }
                records.push((unsigned(i), row.get::<_, Vec<u8>>(1)));
            }
            if records.is_empty() && signed.is_some() {
                return Ok(Some(unsigned(size)));
            }
            let mut known: HashMap<u64, Hash> = HashMap::new();
            let mut rounds = 0;
            let extension = loop {
                let needed = match step(unsigned(size), &records, &known)
                    .map_err(|e| StoreError::Db(e.to_string()))?
                {
                    Step::Done(extension) => break extension,
                    Step::Need(needed) => needed,
                };
                rounds += 1;
                if rounds > MAX_HASH_ROUNDS || needed.iter().all(|i| known.contains_key(i)) {
                    return Err(StoreError::Db(
                        "audit: extending the tree keeps asking for stored hashes".into(),
                    ));
                }
                let wanted = needed
                    .iter()
                    .map(|&i| index(i))
                    .collect::<Result<Vec<_>, _>>()?;
                let rows = tx
                    .query(
                        "SELECT idx, hash FROM audit_hashes WHERE idx = ANY($1)",
                        &[&wanted],
                    )
                    .await
                    .map_err(pg_err)?;
                for row in rows {
                    known.insert(unsigned(row.get(0)), to_hash(row.get(1))?);
                }
                if let Some(absent) = needed.iter().find(|i| !known.contains_key(i)) {
                    return Err(StoreError::Db(format!(
                        "audit: the tree's stored hash {absent} is missing"
                    )));
                }
            };
            let mut indexes = Vec::with_capacity(extension.hashes.len());
            let mut hashes = Vec::with_capacity(extension.hashes.len());
            for (i, h) in &extension.hashes {
                indexes.push(index(*i)?);
                hashes.push(h.0.to_vec());
            }
            tx.execute(
                "INSERT INTO audit_hashes (idx, hash) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
                &[&indexes, &hashes],
            )
            .await
            .map_err(pg_err)?;
            let new_size = index(extension.size)?;
            tx.execute(
                "UPDATE audit_head SET size = $1, checkpoint = $2",
                &[&new_size, &extension.checkpoint],
            )
            .await
            .map_err(pg_err)?;
            tx.execute("DELETE FROM audit_ranges WHERE stop <= $1", &[&new_size])
                .await
                .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            Ok(Some(extension.size))
        })
        .map_err(audit_err)
    }

    fn head(&self) -> Result<(u64, Option<Vec<u8>>), AuditError> {
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_one("SELECT size, checkpoint FROM audit_head", &[])
                .await
                .map_err(pg_err)?;
            Ok((unsigned(row.get(0)), row.get(1)))
        })
        .map_err(audit_err)
    }

    fn read(&self, from: u64, to: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let to = i64::try_from(to).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let rows = client
                .query(
                    "SELECT idx, body FROM audit_records
                     WHERE idx >= $1 AND idx < LEAST($2, (SELECT size FROM audit_head))
                     ORDER BY idx LIMIT $3",
                    &[&from, &to, &limit],
                )
                .await
                .map_err(pg_err)?;
            Ok(rows
                .into_iter()
                .map(|r| (unsigned(r.get(0)), r.get(1)))
                .collect())
        })
        .map_err(audit_err)
    }

    fn hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, AuditError> {
        let wanted = indexes
            .iter()
            .map(|&i| index(i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(audit_err)?;
        let order = indexes.to_vec();
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let rows = client
                .query(
                    "SELECT idx, hash FROM audit_hashes WHERE idx = ANY($1)",
                    &[&wanted],
                )
                .await
                .map_err(pg_err)?;
            let mut found = HashMap::new();
            for row in rows {
                found.insert(unsigned(row.get(0)), to_hash(row.get(1))?);
            }
            order
                .iter()
                .map(|i| {
                    found
                        .get(i)
                        .copied()
                        .ok_or_else(|| StoreError::Db(format!("audit: stored hash {i} is missing")))
                })
                .collect()
        })
        .map_err(audit_err)
    }

    fn publish_key(&self, owner: &str, vkey: &str) -> Result<(), AuditError> {
        let (owner, vkey) = (owner.to_owned(), vkey.to_owned());
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            client
                .execute(
                    "INSERT INTO audit_keys (vkey, owner, added_at)
                     VALUES ($1, $2, clock_timestamp()) ON CONFLICT (vkey) DO NOTHING",
                    &[&vkey, &owner],
                )
                .await
                .map_err(pg_err)?;
            Ok(())
        })
        .map_err(audit_err)
    }

    fn keys(&self) -> Result<Vec<String>, AuditError> {
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let rows = client
                .query(
                    "SELECT vkey FROM audit_keys ORDER BY added_at, vkey COLLATE \"C\"",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            Ok(rows.into_iter().map(|r| r.get(0)).collect())
        })
        .map_err(audit_err)
    }
}

fn to_hash(bytes: Vec<u8>) -> Result<Hash, StoreError> {
    <[u8; 32]>::try_from(bytes.as_slice())
        .map(Hash)
        .map_err(|_| StoreError::Db("audit: a stored hash is not 32 bytes".into()))
}
