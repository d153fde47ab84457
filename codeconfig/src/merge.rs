//! Combining the main file with its includes: maps are merged key by key (recursively),
//! lists are concatenated, scalars from later files override earlier ones, and a key
//! a file leaves unset (or null) changes nothing.
//!
//! This is openvox-code's generic merge, applied field by field to specs that were
//! each checked on their own first. Merging typed values rather than generic YAML
//! keeps every scalar in the form its file gave it (a tag written `1.10` stays
//! `1.10`, where a generic merge would have turned it into the number 1.1).

use std::collections::BTreeMap;

use crate::config::{Spec, StaticEnvironment};

impl Spec {
    /// Merges `later` (an included file) into `self`.
    pub(crate) fn merge(&mut self, later: Spec) {
        self.includes.extend(later.includes);
        self.sources.extend(later.sources);
        merge_map(&mut self.modulesets, later.modulesets, |earlier, later| {
            earlier.extend(later);
        });
        merge_map(
            &mut self.environments,
            later.environments,
            merge_environment,
        );
        if later.overrides.gitmirror.is_some() {
            self.overrides.gitmirror = later.overrides.gitmirror;
        }
        self.overrides.gitmirrors.extend(later.overrides.gitmirrors);
    }
}

fn merge_environment(earlier: &mut StaticEnvironment, later: StaticEnvironment) {
    if later.reference.is_some() {
        earlier.reference = later.reference;
    }
    earlier.modulesets.extend(later.modulesets);
    earlier.modules.extend(later.modules);
}

fn merge_map<V>(
    earlier: &mut BTreeMap<String, V>,
    later: BTreeMap<String, V>,
    merge_value: impl Fn(&mut V, V),
) {
    for (key, value) in later {
        match earlier.get_mut(&key) {
            Some(existing) => merge_value(existing, value),
            None => {
                earlier.insert(key, value);
            }
        }
    }
}
