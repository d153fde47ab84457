//! Module files: the `kind: ModuleFile` documents a control repository carries per
//! branch, and a source's `modulefiles` that says which of them to read.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::checks::de_with;
use crate::envelope;
use crate::error::{Error, ErrorKind};
use crate::glob::{Glob, GlobVisitor, deserialize_path_glob};
use crate::module::Module;

/// The `kind` of a module file.
pub const MODULE_FILE_KIND: &str = "ModuleFile";

/// A branch's module list: `modules` add to (and by name replace) the environment's
/// modules, `exclude` removes modules by name (see the crate docs for the full rule).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleFile {
    #[serde(default, deserialize_with = "de_with::nullable")]
    pub modules: Vec<Module>,
    #[serde(default, deserialize_with = "de_with::nullable")]
    pub exclude: Vec<String>,
}

impl ModuleFile {
    /// Parses a module file (envelope or flat form); `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, Error> {
        envelope::parse_document(file, text, MODULE_FILE_KIND)
    }
}

/// One entry of a source's `modulefiles`: a path or glob inside the branch, and
/// whether a branch without it fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFileSpec {
    pub pattern: Glob,
    pub required: bool,
}

/// The list form's entry. `required` defaults to true, as in openvox-code: listing a
/// file is a statement that it should be there.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListEntry {
    #[serde(deserialize_with = "deserialize_path_glob")]
    name: Glob,
    #[serde(default = "yes")]
    required: bool,
}

fn yes() -> bool {
    true
}

/// The older map form's value.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Requirement {
    Required,
    Optional,
}

/// Reads `modulefiles` in either form, keeping the order written (later files
/// override earlier ones, so order matters even for the map form). Null is empty.
pub(crate) fn deserialize_modulefiles<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<ModuleFileSpec>, D::Error> {
    deserializer.deserialize_any(ModuleFilesVisitor)
}

struct ModuleFilesVisitor;

impl<'de> Visitor<'de> for ModuleFilesVisitor {
    type Value = Vec<ModuleFileSpec>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map `path: required|optional` or a list of `{name, required}`")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut specs: Vec<ModuleFileSpec> = Vec::new();
        while let Some(pattern) = map.next_key_seed(PathGlobSeed)? {
            let required = matches!(map.next_value::<Requirement>()?, Requirement::Required);
            push_unique(&mut specs, pattern, required).map_err(de::Error::custom)?;
        }
        Ok(specs)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut specs: Vec<ModuleFileSpec> = Vec::new();
        while let Some(entry) = seq.next_element::<ListEntry>()? {
            push_unique(&mut specs, entry.name, entry.required).map_err(de::Error::custom)?;
        }
        Ok(specs)
    }
}

fn push_unique(
    specs: &mut Vec<ModuleFileSpec>,
    pattern: Glob,
    required: bool,
) -> Result<(), String> {
    if specs.iter().any(|s| s.pattern == pattern) {
        return Err(format!("module file `{pattern}` is listed twice"));
    }
    specs.push(ModuleFileSpec { pattern, required });
    Ok(())
}

struct PathGlobSeed;

impl<'de> de::DeserializeSeed<'de> for PathGlobSeed {
    type Value = Glob;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Glob, D::Error> {
        deserializer.deserialize_str(GlobVisitor { path: true })
    }
}

/// The module files to read from a branch, given the paths the branch has (`present`,
/// `/`-separated, relative to its root).
///
/// Entries are taken in the order written; a glob contributes its matches in sorted
/// order; a path matched twice is read once, at its first place. A required exact
/// path that is absent, or a required glob that matches nothing, is an error of kind
/// [`ErrorKind::MissingModuleFile`] naming the pattern; optional ones are skipped.
pub fn select_module_files(
    specs: &[ModuleFileSpec],
    present: &[String],
) -> Result<Vec<String>, Error> {
    let mut chosen: Vec<String> = Vec::new();
    for spec in specs {
        let mut matches: Vec<&String> = present
            .iter()
            .filter(|path| spec.pattern.matches(path))
            .collect();
        matches.sort();
        if matches.is_empty() && spec.required {
            let message = if spec.pattern.is_literal() {
                "required module file is missing from the branch"
            } else {
                "required module file glob matches no file in the branch"
            };
            return Err(
                Error::new(ErrorKind::MissingModuleFile, spec.pattern.as_str(), message)
                    .with_key("modulefiles"),
            );
        }
        for path in matches {
            if !chosen.contains(path) {
                chosen.push(path.clone());
            }
        }
    }
    Ok(chosen)
}
