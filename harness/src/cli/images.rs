//! `vmrepro images`: the cache's images and kernels, built, listed,
//! imported and removed.

use anyhow::Result;

use vmrepro::host;
use vmrepro::media::{image, kernel};
use vmrepro::project::Project;

use vmrepro::check::verdict::{EXIT_ENV, EXIT_PASS};

use super::flags::{ImagesCommand, ListFormat};
use crate::{built_kernels, Outputs, UsageError};

pub(crate) fn images(project: &Project, command: ImagesCommand, outputs: &Outputs) -> Result<u8> {
    let cache = outputs.cache();
    let recipe_of = |release: &str| project.recipe(release).map_err(anyhow::Error::from);
    match command {
        ImagesCommand::List {
            format: ListFormat::Json,
        } => {
            out!("{}", serde_json::to_string_pretty(&cache.list())?);
            Ok(EXIT_PASS)
        }
        ImagesCommand::List { .. } => {
            out!("cache: {}", cache.root().display());
            for row in cache.list() {
                out!(
                    "{:<8} {:<40} {:>8.1} MiB{}",
                    row.kind,
                    row.name,
                    row.bytes as f64 / (1 << 20) as f64,
                    if row.complete {
                        ""
                    } else {
                        "  (incomplete: rebuilt on next use)"
                    }
                );
            }
            Ok(EXIT_PASS)
        }
        ImagesCommand::Build {
            releases,
            kernel_only,
            no_kernel,
        } => {
            host::ensure_tools(&outputs.events, outputs.settings.install)?;
            if !no_kernel {
                for (name, recipe) in built_kernels(project) {
                    let kernel = kernel::built(&cache, name, recipe)?;
                    out!(
                        "kernel {name:<10} {} ({})",
                        kernel.release,
                        kernel.image.display()
                    );
                }
            }
            if kernel_only {
                return Ok(EXIT_PASS);
            }
            let names: Vec<String> = if releases.is_empty() {
                project.recipes.keys().cloned().collect()
            } else {
                releases
            };
            let mut code = EXIT_PASS;
            for release in names {
                let recipe = recipe_of(&release)?;
                if image::lookup(&cache, recipe).is_none() {
                    if let Err(e) = image::probe_reachable(recipe) {
                        eprintln!("vmrepro: {e}");
                        code = EXIT_ENV;
                        continue;
                    }
                }
                let built = image::image(&cache, recipe)?;
                out!(
                    "image {:<10} {} (stock kernel {})",
                    release,
                    built.dir.display(),
                    built.manifest.stock_kernel_release
                );
            }
            Ok(code)
        }
        ImagesCommand::Clean { names } => {
            let releases: Vec<String> = names
                .iter()
                .filter(|n| !matches!(n.as_str(), "kernels" | "warm"))
                .map(|n| recipe_of(n).map(|r| r.release.clone()))
                .collect::<Result<_>>()?;
            let removed = cache.remove(|row| {
                names.is_empty()
                    || (row.kind == kernel::KIND && names.iter().any(|n| n == "kernels"))
                    || (row.kind == vmrepro::guest::warm::KIND && names.iter().any(|n| n == "warm"))
                    || releases.iter().any(|release| {
                        row.name == *release || row.name.starts_with(&format!("{release}-"))
                    })
            })?;
            for row in &removed {
                out!("removed {}/{}", row.kind, row.name);
            }
            if removed.is_empty() {
                out!("nothing to remove");
            }
            Ok(EXIT_PASS)
        }
        ImagesCommand::Key { release, kernel } => {
            if let Some(name) = kernel {
                let recipes = built_kernels(project);
                let (name, recipe) =
                    match (name.as_str(), recipes.as_slice()) {
                        ("", [only]) => *only,
                        ("", _) => {
                            return Err(UsageError(format!(
                            "name the kernel flavour: --kernel FLAVOUR (built from a recipe: {})",
                            recipes.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                        ))
                            .into())
                        }
                        (name, _) => {
                            *recipes.iter().find(|(n, _)| *n == name).ok_or_else(|| {
                                UsageError(format!(
                            "{name:?} is not a kernel flavour built from a recipe (those are: {})",
                            recipes.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                        ))
                            })?
                        }
                    };
                out!("{}", kernel::key(&cache, name, recipe)?);
            } else if let Some(release) = release {
                out!("{}", image::key(recipe_of(&release)?));
            }
            Ok(EXIT_PASS)
        }
        ImagesCommand::Import { release, file } => {
            host::ensure_tools(&outputs.events, outputs.settings.install)?;
            let recipe = recipe_of(&release)?;
            let imported = image::import(&cache, recipe, &file)?;
            out!(
                "imported {} as the {release} image ({}; stock kernel {})",
                file.display(),
                imported.dir.display(),
                imported.manifest.stock_kernel_release
            );
            Ok(EXIT_PASS)
        }
    }
}
