//! Collection versions: a collection can be rebuilt as a new version (its
//! chunks re-embedded with another encoder, or uploaded again under a new
//! key) while the current version keeps serving, then switched to in one
//! atomic step.
//!
//! Version 1 is the collection as created, stored as `TENANT.NAME`; version
//! N > 1 is stored as `TENANT.NAME.vN`. Public names have no dots, so the two
//! never collide. Once a later version serves, the store alias `TENANT.NAME`
//! names it (aliases shadow the collection of the same name). Every
//! collection route also takes `NAME.vN`, addressing that version itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use eerag_core::wire::{
    CreateVersionRequest, ReembedRequest, ReembedResponse, SwitchResponse, VersionInfo, VersionList,
};
use eerag_store::store::{Collection, CollectionSpec, NewChunk, NewDocument, Store, StoreError};

use crate::service::{validate_name, Service, ServiceError};

/// Most versions a collection may have at once (current, one being built,
/// and the old one kept until deleted, with room to spare).
const MAX_VERSIONS: usize = 8;

/// The public name and version of a stored collection's own name (without
/// its tenant): `NAME.vN` is version N, anything else version 1.
pub fn split_version(own: &str) -> (&str, u32) {
    if let Some((base, v)) = own.rsplit_once(".v") {
        if let Ok(n) = v.parse::<u32>() {
            if n >= 2 && !base.contains('.') && v == n.to_string() {
                return (base, n);
            }
        }
    }
    (own, 1)
}

/// A public name (`NAME`, or `NAME.vN` for one version) as the collection
/// name, and the version when one is given.
pub fn parse_public(name: &str) -> Result<(&str, Option<u32>), ServiceError> {
    let bad = || {
        ServiceError::Invalid {
            code: "invalid_name",
            message: "a collection name must be 1 to 64 characters of A-Z a-z 0-9 _ -, or such a name and .vN for one of its versions".into(),
        }
    };
    let (base, version) = match name.rsplit_once(".v") {
        Some((base, v)) => {
            let n: u32 = v.parse().map_err(|_| bad())?;
            if n == 0 || v != n.to_string() {
                return Err(bad());
            }
            (base, Some(n))
        }
        None => (name, None),
    };
    validate_name("a collection name", base).map_err(|_| bad())?;
    Ok((base, version))
}

/// The store name of version `version` of `tenant`'s collection `base`.
pub fn version_name(tenant: &str, base: &str, version: u32) -> String {
    if version <= 1 {
        Service::store_name(tenant, base)
    } else {
        format!("{}.v{version}", Service::store_name(tenant, base))
    }
}

/// The store name a public name opens: the alias or first version for
/// `NAME`, the version itself for `NAME.vN`. Version 1 of a collection
/// that has switched away from it is reached by [`Service::open`].
pub fn address(tenant: &str, name: &str) -> Result<String, ServiceError> {
    let (base, version) = parse_public(name)?;
    Ok(version_name(tenant, base, version.unwrap_or(1)))
}

/// The collections serving the public names under `prefix` (`TENANT.`):
/// each alias's target, and every first version no alias shadows.
pub fn serving(store: &dyn Store, prefix: &str) -> Result<Vec<Arc<dyn Collection>>, StoreError> {
    let aliases = store.aliases()?;
    let mut out: BTreeMap<String, Arc<dyn Collection>> = BTreeMap::new();
    for c in store.collections()? {
        let own = &c.meta().name;
        let Some(rest) = own.strip_prefix(prefix) else {
            continue;
        };
        if !rest.contains('.') && !aliases.contains_key(own) {
            out.insert(rest.to_string(), c);
        }
    }
    for (alias, target) in &aliases {
        let Some(rest) = alias.strip_prefix(prefix) else {
            continue;
        };
        match store.collection(target) {
            Ok(c) => {
                out.insert(rest.to_string(), c);
            }
            // Deleted between the two listings.
            Err(StoreError::CollectionNotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out.into_values().collect())
}

/// A collection's stored versions, by number.
type Versions = BTreeMap<u32, Arc<dyn Collection>>;

/// Every stored version of `base`, and the one serving it.
fn stored_versions(
    store: &dyn Store,
    tenant: &str,
    base: &str,
) -> Result<(Versions, Option<u32>), StoreError> {
    let first = Service::store_name(tenant, base);
    let prefix = format!("{tenant}.");
    let mut versions = BTreeMap::new();
    for c in store.collections()? {
        let own = &c.meta().name;
        let Some(rest) = own.strip_prefix(&prefix) else {
            continue;
        };
        let (b, v) = split_version(rest);
        if b == base && (v > 1 || *own == first) {
            versions.insert(v, c);
        }
    }
    let current = match store.aliases()?.get(&first) {
        Some(target) => Some(split_version(target.strip_prefix(&prefix).unwrap_or(target)).1),
        None => versions.contains_key(&1).then_some(1),
    };
    Ok((versions, current))
}

impl Service {
    /// Opens a version that `NAME.v1` addresses when an alias shadows it.
    pub(crate) async fn open_first_version(
        &self,
        tenant: &str,
        base: &str,
    ) -> Result<Arc<dyn Collection>, ServiceError> {
        let (store, tenant_, base_) = (self.store.clone(), tenant.to_string(), base.to_string());
        let (mut versions, _) = self
            .blocking(move || stored_versions(store.as_ref(), &tenant_, &base_))
            .await?;
        versions
            .remove(&1)
            .ok_or_else(|| ServiceError::NotFound(format!("collection {base:?} has no version 1")))
    }

    async fn versions_of(&self, tenant: &str, base: &str) -> Result<(Versions, u32), ServiceError> {
        let (store, tenant_, base_) = (self.store.clone(), tenant.to_string(), base.to_string());
        let (versions, current) = self
            .blocking(move || stored_versions(store.as_ref(), &tenant_, &base_))
            .await?;
        match current {
            Some(c) if versions.contains_key(&c) => Ok((versions, c)),
            _ => Err(ServiceError::NotFound(format!(
                "collection {base:?} does not exist"
            ))),
        }
    }

    fn version_info(
        base: &str,
        version: u32,
        c: &dyn Collection,
        current: u32,
    ) -> Result<VersionInfo, StoreError> {
        let meta = c.meta();
        Ok(VersionInfo {
            collection: base.to_string(),
            version,
            name: format!("{base}.v{version}"),
            key_id: meta.key_id,
            encoder: meta.encoder.clone(),
            dim: meta.dim,
            chunks: c.count()?,
            current: version == current,
        })
    }

    /// Every version of a collection.
    pub async fn list_versions(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<VersionList, ServiceError> {
        let (base, _) = parse_public(name)?;
        let (versions, current) = self.versions_of(tenant, base).await?;
        let base_ = base.to_string();
        let versions = self
            .blocking(move || {
                versions
                    .iter()
                    .map(|(v, c)| Self::version_info(&base_, *v, c.as_ref(), current))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(VersionList { versions })
    }

    /// Creates the next version of a collection, empty, bound to the
    /// requested key and encoder (models this host serves).
    pub async fn create_version(
        &self,
        tenant: &str,
        name: &str,
        request: CreateVersionRequest,
    ) -> Result<VersionInfo, ServiceError> {
        let (base, _) = parse_public(name)?;
        let _ops = self.version_ops.lock().await;
        let (versions, current) = self.versions_of(tenant, base).await?;
        if versions.len() >= MAX_VERSIONS {
            return Err(ServiceError::Conflict(format!(
                "collection {base:?} already has {} versions: delete old ones first",
                versions.len()
            )));
        }
        let current_meta = versions[&current].meta().clone();
        let key_id = request.key_id.unwrap_or(current_meta.key_id);
        let for_key: Vec<&crate::service::ServedModels> =
            self.models.iter().filter(|m| m.key_id == key_id).collect();
        let chosen = match &request.encoder {
            Some(e) => for_key.iter().find(|m| m.encoder == *e).copied(),
            // By default another encoder than the current version's (what a
            // re-embedding is for) when exactly one other is served; the
            // same one when it is the only one.
            None => {
                let others: Vec<&crate::service::ServedModels> = for_key
                    .iter()
                    .filter(|m| Some(&m.encoder) != current_meta.encoder.as_ref())
                    .copied()
                    .collect();
                match others.len() {
                    1 => Some(others[0]),
                    0 => for_key.first().copied(),
                    _ if for_key.len() > 1 => {
                        return Err(ServiceError::Invalid {
                            code: "encoder_required",
                            message: format!(
                                "this host serves {} encoders for key {key_id}: name the one to use (encoder)",
                                for_key.len()
                            ),
                        })
                    }
                    _ => others.first().copied(),
                }
            }
        };
        let models = chosen.ok_or_else(|| ServiceError::Invalid {
            code: "models_not_served",
            message: format!(
                "this host serves no models for key {key_id}{}: start it with --artifacts for them",
                request
                    .encoder
                    .as_ref()
                    .map(|e| format!(" and encoder {}", e.chars().take(12).collect::<String>()))
                    .unwrap_or_default()
            ),
        })?;
        let version = versions.keys().max().copied().unwrap_or(1).max(current) + 1;
        let spec = CollectionSpec {
            key_id,
            dim: models.engine.facts().dim,
            encoder: Some(models.encoder.clone()),
        };
        let store = self.store.clone();
        let full = version_name(tenant, base, version);
        let base_ = base.to_string();
        self.blocking(move || {
            let c = store.create(&full, &spec)?;
            Self::version_info(&base_, version, c.as_ref(), current)
        })
        .await
    }

    /// Makes `version` the one the collection's name serves.
    pub async fn switch_version(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
    ) -> Result<SwitchResponse, ServiceError> {
        let (base, _) = parse_public(name)?;
        let _ops = self.version_ops.lock().await;
        let (versions, current) = self.versions_of(tenant, base).await?;
        if !versions.contains_key(&version) {
            return Err(ServiceError::NotFound(format!(
                "collection {base:?} has no version {version}"
            )));
        }
        let store = self.store.clone();
        let alias = Service::store_name(tenant, base);
        let target = (version > 1).then(|| version_name(tenant, base, version));
        self.blocking(move || store.set_alias(&alias, target.as_deref()))
            .await?;
        tracing::info!(
            previous = current,
            current = version,
            "collection version switched"
        );
        Ok(SwitchResponse {
            previous: current,
            current: version,
        })
    }

    /// Deletes a collection with all its versions, or (`NAME.vN`) one
    /// version that is not the current one.
    pub async fn delete_collection(&self, tenant: &str, name: &str) -> Result<(), ServiceError> {
        let (base, version) = parse_public(name)?;
        let _ops = self.version_ops.lock().await;
        let store = self.store.clone();
        match version {
            Some(v) => {
                let (versions, current) = self.versions_of(tenant, base).await?;
                if v == current {
                    return Err(ServiceError::Conflict(format!(
                        "version {v} serves collection {base:?}: switch to another first, or delete the collection"
                    )));
                }
                let doomed = versions
                    .get(&v)
                    .ok_or_else(|| {
                        ServiceError::NotFound(format!("collection {base:?} has no version {v}"))
                    })?
                    .meta()
                    .name
                    .clone();
                self.blocking(move || store.delete_collection(&doomed))
                    .await
            }
            None => {
                let alias = Service::store_name(tenant, base);
                let (tenant_, base_) = (tenant.to_string(), base.to_string());
                let found = self
                    .blocking(move || {
                        let (versions, current) =
                            stored_versions(store.as_ref(), &tenant_, &base_)?;
                        if versions.is_empty() && current.is_none() {
                            return Ok(false);
                        }
                        // Versions that do not serve go first, then the
                        // name, then what it served: a failure part-way
                        // leaves the collection serving as before, or gone,
                        // never an older version serving again.
                        for (v, c) in &versions {
                            if Some(*v) != current {
                                store.delete_collection(&c.meta().name)?;
                            }
                        }
                        store.set_alias(&alias, None)?;
                        if let Some(c) = current.and_then(|v| versions.get(&v)) {
                            store.delete_collection(&c.meta().name)?;
                        }
                        Ok(true)
                    })
                    .await?;
                if found {
                    Ok(())
                } else {
                    Err(ServiceError::NotFound(format!(
                        "collection {base:?} does not exist"
                    )))
                }
            }
        }
    }

    /// One step of re-embedding the current version into `version` (see
    /// [`ReembedRequest`]).
    pub async fn reembed(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
        request: ReembedRequest,
    ) -> Result<ReembedResponse, ServiceError> {
        let (base, _) = parse_public(name)?;
        let (mut versions, current) = self.versions_of(tenant, base).await?;
        let from = request.from.unwrap_or(current);
        if version == from {
            return Err(ServiceError::Invalid {
                code: "invalid_version",
                message: format!(
                    "version {version} is the one re-embedded from: re-embed into another version"
                ),
            });
        }
        let target = versions.remove(&version).ok_or_else(|| {
            ServiceError::NotFound(format!("collection {base:?} has no version {version}"))
        })?;
        let source = versions.remove(&from).ok_or_else(|| {
            ServiceError::NotFound(format!("collection {base:?} has no version {from}"))
        })?;
        if target.meta().key_id != source.meta().key_id {
            return Err(ServiceError::Invalid {
                code: "key_mismatch",
                message: format!(
                    "version {version} is bound to key {}, the current version to key {}: re-embedding keeps the ids, so a new key needs a re-upload (eerag reindex rekey)",
                    target.meta().key_id,
                    source.meta().key_id
                ),
            });
        }
        let limit = request.limit.clamp(1, 1000);
        let mut out = ReembedResponse::default();
        if request.prune {
            let (t, s, after) = (target.clone(), source.clone(), request.after.clone());
            let (removed, examined, next) = self
                .blocking(move || {
                    let (docs, next) = t.documents(after.as_deref(), limit)?;
                    let mut removed = 0;
                    for d in &docs {
                        if s.document(&d.doc_id)?.is_none() {
                            t.delete_document(&d.doc_id)?;
                            removed += 1;
                        }
                    }
                    Ok((removed, docs.len(), next))
                })
                .await
                .map_err(cursor_error)?;
            out.documents_removed = removed;
            out.examined = examined;
            out.next = next;
            return Ok(out);
        }
        let engine = &self.models_for(target.meta())?.engine;
        // The documents of this page whose copy in the version is missing or
        // older: copies keep their write numbers, and a document written
        // anew (into either version) gets a higher one, so a copy as new as
        // its source, or newer (written after a switch), is left alone.
        let (s, t, after) = (source.clone(), target.clone(), request.after.clone());
        let (stale, examined, next) = self
            .blocking(move || {
                let (docs, next) = s.documents(after.as_deref(), limit)?;
                let mut stale = Vec::new();
                for d in &docs {
                    let copy = t.document(&d.doc_id)?;
                    if copy.as_ref().is_some_and(|c| {
                        c.first_seq > d.first_seq
                            || (c.first_seq == d.first_seq
                                && c.content_hash == d.content_hash
                                && c.chunks == d.chunks)
                    }) {
                        continue;
                    }
                    let chunks = s.document_chunks(&d.doc_id)?;
                    if !chunks.is_empty() {
                        stale.push((d.clone(), chunks));
                    }
                }
                Ok((stale, docs.len(), next))
            })
            .await
            .map_err(cursor_error)?;
        // Stored ids are checked like uploaded ones: another encoder may
        // have another vocabulary or window.
        let facts = engine.facts();
        for (d, chunks) in &stale {
            for c in chunks {
                let ids = c.encoder_ids.ids();
                if ids.len() > facts.encoder_max_tokens
                    || ids.iter().any(|&i| i as usize >= facts.encoder_vocab)
                {
                    return Err(ServiceError::Invalid {
                        code: "encoder_mismatch",
                        message: format!(
                            "document {} holds ids this version's encoder cannot take (its vocabulary is {} ids, its window {} tokens): an encoder with another tokenizer needs the documents uploaded again",
                            d.doc_id, facts.encoder_vocab, facts.encoder_max_tokens
                        ),
                    });
                }
            }
        }
        let seqs: Vec<Vec<u32>> = stale
            .iter()
            .flat_map(|(_, chunks)| chunks.iter().map(|c| c.encoder_ids.ids().to_vec()))
            .collect();
        let mut vectors = engine.embed(seqs).await?.into_iter();
        let docs: Vec<NewDocument> = stale
            .into_iter()
            .map(|(d, chunks)| NewDocument {
                doc_id: d.doc_id,
                content_hash: d.content_hash,
                chunks: chunks
                    .into_iter()
                    .map(|c| NewChunk {
                        encoder_ids: c.encoder_ids,
                        generator_ids: c.generator_ids,
                        metadata: c.metadata,
                        vector: vectors.next().expect("one vector per chunk"),
                        // Write order is kept, and with it how ties break.
                        seq: Some(c.seq),
                    })
                    .collect(),
            })
            .collect();
        out.examined = examined;
        out.documents_written = docs.len();
        out.chunks_written = docs.iter().map(|d| d.chunks.len()).sum();
        out.next = next;
        if !docs.is_empty() {
            self.blocking(move || target.put_documents(&docs)).await?;
        }
        self.metrics.add_chunks_written(out.chunks_written);
        Ok(out)
    }
}

fn cursor_error(e: ServiceError) -> ServiceError {
    match e {
        ServiceError::Store(StoreError::InvalidCursor) => ServiceError::Invalid {
            code: "invalid_cursor",
            message: StoreError::InvalidCursor.to_string(),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names() {
        assert_eq!(split_version("docs"), ("docs", 1));
        assert_eq!(split_version("docs.v2"), ("docs", 2));
        assert_eq!(split_version("docs.v12"), ("docs", 12));
        for odd in ["docs.v1", "docs.v02", "docs.vx", "a.b.v2"] {
            assert_eq!(split_version(odd).1, 1, "{odd}");
        }
        assert_eq!(parse_public("docs").unwrap(), ("docs", None));
        assert_eq!(parse_public("docs.v3").unwrap(), ("docs", Some(3)));
        assert_eq!(parse_public("docs.v1").unwrap(), ("docs", Some(1)));
        for bad in [
            "docs.v0", "docs.v", "docs.vx", "docs.v03", "a.b", ".v2", "a/b.v2",
        ] {
            assert!(parse_public(bad).is_err(), "{bad}");
        }
        assert_eq!(version_name("t", "docs", 1), "t.docs");
        assert_eq!(version_name("t", "docs", 4), "t.docs.v4");
    }
}
