//! eerag's aliases on Qdrant: held as suffixed Qdrant aliases (eerag's may
//! shadow a collection of the same name, Qdrant's may not) and listed at
//! most every [`ALIAS_TTL`].

use std::collections::BTreeMap;
use std::time::Duration;

use super::QdrantStore;
use crate::store::Result;

/// Suffix of the Qdrant aliases that hold eerag's aliases. eerag aliases
/// shadow collections of the same name, which Qdrant's own may not, so they
/// live under their own names and eerag resolves them.
pub(super) const ALIAS_SUFFIX: &str = "~alias";
/// How long a host trusts the aliases it listed: other hosts see a switch
/// within this time (jobs wait longer than this before deleting what an
/// alias named before).
pub const ALIAS_TTL: Duration = Duration::from_secs(1);

impl QdrantStore {
    /// The eerag aliases, listed at most every [`ALIAS_TTL`] (`fresh`:
    /// listed now).
    pub(super) fn alias_map(&self, fresh: bool) -> Result<BTreeMap<String, String>> {
        let cached = self
            .aliases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some((at, map)) = &cached {
            if !fresh && at.elapsed() < ALIAS_TTL {
                return Ok(map.clone());
            }
        }
        // Listed without holding the lock, so a slow or dead server holds up
        // only the requests that need the listing, each with its own retries.
        let listed = self.client.run("", |q| q.list_aliases())?;
        let prefix = &self.options.collection_prefix;
        let map: BTreeMap<String, String> = listed
            .aliases
            .into_iter()
            .filter_map(|a| {
                let alias = a
                    .alias_name
                    .strip_prefix(prefix)?
                    .strip_suffix(ALIAS_SUFFIX)?;
                let target = a.collection_name.strip_prefix(prefix)?;
                Some((alias.to_string(), target.to_string()))
            })
            .collect();
        *self.aliases.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((std::time::Instant::now(), map.clone()));
        Ok(map)
    }
}
