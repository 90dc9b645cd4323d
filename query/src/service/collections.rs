//! Collection and document operations: open, create, list, upsert, delete,
//! export and store maintenance.

use std::sync::Arc;

use eerag_core::wire::{
    CollectionInfo, DocumentExport, DocumentList, DocumentResult, DocumentStatus, DocumentSummary,
    StoredChunk, UpsertRequest, UpsertResponse,
};
use eerag_core::{EncEncoderIds, EncGeneratorIds, KeyId};
use eerag_store::store::{Collection, CollectionSpec, NewChunk, NewDocument, StoreError};

use super::validate::{check_ids, invalid, validate_name, validate_opaque};
use super::{Service, ServiceError};

impl Service {
    /// Opens the version a public name serves, or the version `NAME.vN`
    /// names.
    pub(crate) async fn open(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Arc<dyn Collection>, ServiceError> {
        if let (base, Some(1)) = crate::versions::parse_public(name)? {
            return self.open_first_version(tenant, base).await;
        }
        let full = crate::versions::address(tenant, name)?;
        let store = self.store.clone();
        self.blocking(move || store.collection(&full))
            .await
            .map_err(|e| match e {
                ServiceError::NotFound(_) => {
                    ServiceError::NotFound(format!("collection {name:?} does not exist"))
                }
                other => other,
            })
    }

    pub(crate) async fn info(
        &self,
        tenant: &str,
        c: Arc<dyn Collection>,
    ) -> Result<CollectionInfo, ServiceError> {
        let meta = c.meta().clone();
        let chunks = self.blocking(move || c.count()).await?;
        let own = meta
            .name
            .strip_prefix(&format!("{tenant}."))
            .unwrap_or(&meta.name);
        let (name, version) = crate::versions::split_version(own);
        Ok(CollectionInfo {
            name: name.to_string(),
            key_id: meta.key_id,
            dim: meta.dim,
            chunks,
            version,
        })
    }

    /// Creates a collection bound to the artifacts' key.
    pub async fn create_collection(
        &self,
        tenant: &str,
        name: &str,
        key_id: Option<KeyId>,
    ) -> Result<CollectionInfo, ServiceError> {
        validate_name("a collection name", name)?;
        let models = match key_id {
            Some(k) => self.models_for_key(k).map_err(|_| {
                invalid(
                    "key_mismatch",
                    format!(
                        "this host serves models transformed for key {}, not {k}",
                        self.key_id()
                    ),
                )
            })?,
            None => &self.models[0],
        };
        let store = self.store.clone();
        let full = Self::store_name(tenant, name);
        let spec = CollectionSpec {
            key_id: models.key_id,
            dim: models.engine.facts().dim,
            encoder: Some(models.encoder.clone()),
        };
        let _ops = self.version_ops.lock().await;
        let c = self
            .blocking(move || {
                // A name an alias holds is taken even if its first version
                // was deleted, and so is one with versions left over.
                let versions = format!("{full}.v");
                if store.aliases()?.contains_key(&full)
                    || store
                        .collections()?
                        .iter()
                        .any(|c| c.meta().name.starts_with(&versions))
                {
                    return Err(StoreError::CollectionExists(full));
                }
                store.create(&full, &spec)
            })
            .await
            .map_err(|e| match e {
                ServiceError::Conflict(_) => {
                    ServiceError::Conflict(format!("collection {name:?} already exists"))
                }
                other => other,
            })?;
        self.info(tenant, c).await
    }

    /// The tenant's collections, each as the version serving it.
    pub async fn list_collections(
        &self,
        tenant: &str,
    ) -> Result<Vec<CollectionInfo>, ServiceError> {
        let store = self.store.clone();
        let prefix = format!("{tenant}.");
        let serving = self
            .blocking(move || crate::versions::serving(store.as_ref(), &prefix))
            .await?;
        let mut out = Vec::new();
        for c in serving {
            let mut info = self.info(tenant, c).await?;
            info.name = crate::versions::split_version(&info.name).0.to_string();
            out.push(info);
        }
        Ok(out)
    }

    /// Validates, embeds and stores whole documents; returns once durable.
    pub async fn upsert(
        &self,
        tenant: &str,
        name: &str,
        request: UpsertRequest,
    ) -> Result<UpsertResponse, ServiceError> {
        let collection = self.open(tenant, name).await?;
        self.check_key(collection.as_ref(), request.key_id)?;
        let engine = &self.models_for(collection.meta())?.engine;
        let facts = engine.facts();
        let total: usize = request.documents.iter().map(|d| d.chunks.len()).sum();
        if total > self.limits.max_chunks_per_request {
            return Err(invalid(
                "too_many_chunks",
                format!(
                    "{total} chunks in one request; send at most {}",
                    self.limits.max_chunks_per_request
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (d, doc) in request.documents.iter().enumerate() {
            validate_opaque("doc_id", &doc.doc_id)?;
            validate_opaque("content_hash", &doc.content_hash)?;
            if !seen.insert(doc.doc_id.as_str()) {
                return Err(invalid(
                    "duplicate_document",
                    format!("document {} appears twice in the request", doc.doc_id),
                ));
            }
            if doc.chunks.is_empty() {
                return Err(invalid(
                    "empty_document",
                    format!(
                        "document {} has no chunks (delete it with DELETE instead)",
                        doc.doc_id
                    ),
                ));
            }
            for (i, chunk) in doc.chunks.iter().enumerate() {
                let at = format!("documents[{d}].chunks[{i}]");
                check_ids(
                    &format!("{at}.encoder_ids"),
                    &chunk.encoder_ids,
                    facts.encoder_vocab,
                    facts.encoder_max_tokens,
                    false,
                )?;
                check_ids(
                    &format!("{at}.generator_ids"),
                    &chunk.generator_ids,
                    facts.generator_vocab,
                    facts.generator_context,
                    false,
                )?;
                if chunk.metadata.len() > self.limits.max_metadata_bytes {
                    return Err(invalid(
                        "metadata_too_large",
                        format!(
                            "{at}.metadata has {} bytes; at most {} are allowed",
                            chunk.metadata.len(),
                            self.limits.max_metadata_bytes
                        ),
                    ));
                }
            }
        }

        // Documents already stored with the same content are left alone.
        let mut statuses = Vec::with_capacity(request.documents.len());
        for doc in &request.documents {
            let c = collection.clone();
            let id = doc.doc_id.clone();
            let existing = self.blocking(move || c.document(&id)).await?;
            statuses.push(match existing {
                Some(e) if e.content_hash == doc.content_hash && e.chunks == doc.chunks.len() => {
                    DocumentStatus::Unchanged
                }
                Some(_) => DocumentStatus::Replaced,
                None => DocumentStatus::Created,
            });
        }
        let seqs: Vec<Vec<u32>> = request
            .documents
            .iter()
            .zip(&statuses)
            .filter(|(_, s)| **s != DocumentStatus::Unchanged)
            .flat_map(|(d, _)| d.chunks.iter().map(|c| c.encoder_ids.clone()))
            .collect();
        let mut vectors = engine.embed(seqs).await?.into_iter();
        let key = collection.meta().key_id;
        let mut docs = Vec::new();
        let mut results = Vec::with_capacity(request.documents.len());
        for (doc, status) in request.documents.into_iter().zip(statuses) {
            results.push(DocumentResult {
                doc_id: doc.doc_id.clone(),
                chunks: doc.chunks.len(),
                status,
            });
            if status == DocumentStatus::Unchanged {
                continue;
            }
            let chunks = doc
                .chunks
                .into_iter()
                .map(|c| NewChunk {
                    encoder_ids: EncEncoderIds::new(key, c.encoder_ids),
                    generator_ids: EncGeneratorIds::new(key, c.generator_ids),
                    metadata: c.metadata,
                    vector: vectors.next().expect("one vector per embedded chunk"),
                    seq: None,
                })
                .collect();
            docs.push(NewDocument {
                doc_id: doc.doc_id,
                content_hash: doc.content_hash,
                chunks,
            });
        }
        let written: usize = docs.iter().map(|d| d.chunks.len()).sum();
        if !docs.is_empty() {
            let c = collection.clone();
            self.blocking(move || c.put_documents(&docs)).await?;
        }
        self.metrics.add_chunks_written(written);
        Ok(UpsertResponse {
            documents: results,
            chunks_written: written,
        })
    }

    /// Deletes a document; 404 if it has no chunks.
    pub async fn delete_document(
        &self,
        tenant: &str,
        name: &str,
        doc_id: &str,
    ) -> Result<usize, ServiceError> {
        validate_opaque("doc_id", doc_id)?;
        let collection = self.open(tenant, name).await?;
        let id = doc_id.to_string();
        let n = self
            .blocking(move || collection.delete_document(&id))
            .await?;
        if n == 0 {
            return Err(ServiceError::NotFound(format!(
                "document {doc_id} does not exist"
            )));
        }
        Ok(n)
    }

    /// Exports a document's chunks.
    pub async fn export_document(
        &self,
        tenant: &str,
        name: &str,
        doc_id: &str,
    ) -> Result<DocumentExport, ServiceError> {
        validate_opaque("doc_id", doc_id)?;
        let collection = self.open(tenant, name).await?;
        let key_id = collection.meta().key_id;
        let id = doc_id.to_string();
        let chunks = self
            .blocking(move || collection.document_chunks(&id))
            .await?;
        let content_hash = chunks
            .first()
            .map(|c| c.content_hash.clone())
            .ok_or_else(|| ServiceError::NotFound(format!("document {doc_id} does not exist")))?;
        Ok(DocumentExport {
            doc_id: doc_id.to_string(),
            content_hash,
            key_id,
            chunks: chunks
                .into_iter()
                .map(|c| StoredChunk {
                    chunk_id: c.chunk_id.to_string(),
                    index: c.index,
                    encoder_ids: c.encoder_ids.ids().to_vec(),
                    generator_ids: c.generator_ids.ids().to_vec(),
                    metadata: c.metadata,
                })
                .collect(),
        })
    }

    /// A page of the collection's documents.
    pub async fn list_documents(
        &self,
        tenant: &str,
        name: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<DocumentList, ServiceError> {
        let collection = self.open(tenant, name).await?;
        let limit = limit.clamp(1, 1000);
        let (docs, next) = self
            .blocking(move || collection.documents(after.as_deref(), limit))
            .await
            .map_err(|e| match e {
                ServiceError::Store(StoreError::InvalidCursor) => {
                    invalid("invalid_cursor", StoreError::InvalidCursor.to_string())
                }
                other => other,
            })?;
        Ok(DocumentList {
            documents: docs
                .into_iter()
                .map(|d| DocumentSummary {
                    doc_id: d.doc_id,
                    content_hash: d.content_hash,
                    chunks: d.chunks,
                    first_seq: d.first_seq,
                })
                .collect(),
            next,
        })
    }

    /// Runs store maintenance on every collection (segment merging,
    /// vacuuming); called from a background task.
    pub async fn optimize_all(&self) -> Result<(), ServiceError> {
        let store = self.store.clone();
        self.blocking(move || {
            for c in store.collections()? {
                c.optimize()?;
            }
            Ok(())
        })
        .await
    }
}
