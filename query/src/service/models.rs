//! Model routing: which loaded set of transformed models serves a key, a
//! collection or a request.

use eerag_core::KeyId;
use eerag_store::store::{Collection, CollectionMeta};

use super::validate::invalid;
use super::{Service, ServiceError};
use crate::engine::Engine;

/// One set of transformed models the host serves: for one key and one base
/// encoder.
pub struct ServedModels {
    pub engine: Engine,
    pub key_id: KeyId,
    /// SHA-256 of the base encoder (the artifacts' `encoder.base_sha256`).
    pub encoder: String,
}

impl Service {
    /// The key id of the default artifacts.
    pub fn key_id(&self) -> KeyId {
        self.models[0].key_id
    }

    /// Every key the host serves models for, the default first.
    pub fn key_ids(&self) -> Vec<KeyId> {
        let mut keys: Vec<KeyId> = Vec::new();
        for m in &self.models {
            if !keys.contains(&m.key_id) {
                keys.push(m.key_id);
            }
        }
        keys
    }

    /// The default model engine.
    pub fn engine(&self) -> &Engine {
        &self.models[0].engine
    }

    /// The models a collection's vectors and ids need: its key's, and its
    /// encoder's where it records one.
    pub(crate) fn models_for(&self, meta: &CollectionMeta) -> Result<&ServedModels, ServiceError> {
        if meta.encoder.is_none()
            && self
                .models
                .iter()
                .filter(|m| m.key_id == meta.key_id)
                .count()
                > 1
        {
            // Made before collections recorded their encoder: which of the
            // loaded ones made its vectors is unknown.
            return Err(ServiceError::Conflict(format!(
                "this collection does not record which encoder made its vectors, and this host serves several for key {}: serve one encoder for the key while it is re-embedded",
                meta.key_id
            )));
        }
        self.models
            .iter()
            .find(|m| {
                m.key_id == meta.key_id && meta.encoder.as_ref().is_none_or(|e| *e == m.encoder)
            })
            .ok_or_else(|| {
                ServiceError::Conflict(format!(
                    "this collection needs models for key {}{}, which this host does not serve: start it with --artifacts for them",
                    meta.key_id,
                    meta.encoder
                        .as_ref()
                        .map(|e| format!(" and encoder {}", e.chars().take(12).collect::<String>()))
                        .unwrap_or_default()
                ))
            })
    }

    /// The models for a key: the first loaded for it.
    pub(crate) fn models_for_key(&self, key_id: KeyId) -> Result<&ServedModels, ServiceError> {
        self.models
            .iter()
            .find(|m| m.key_id == key_id)
            .ok_or_else(|| {
                invalid(
                    "key_mismatch",
                    format!("this host serves no models for key {key_id}"),
                )
            })
    }

    pub(super) fn check_key(
        &self,
        collection: &dyn Collection,
        key_id: KeyId,
    ) -> Result<(), ServiceError> {
        if collection.meta().key_id != key_id {
            return Err(invalid(
                "key_mismatch",
                format!(
                    "the request is encrypted under key {key_id}, the collection under key {}",
                    collection.meta().key_id
                ),
            ));
        }
        Ok(())
    }
}
