//! The instances file as the operations read it when no daemon answers:
//! does it load, is an ID in it.

use super::Ctx;
use crate::config::{self, Trust};
use crate::model::{Config, InstanceSpec};

pub fn load(ctx: &Ctx) -> Result<Config, (i32, String)> {
    config::load(&ctx.config, Trust::for_current_user()).map_err(|diags| {
        let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        (
            2,
            format!("the instances file is invalid:\n{}", text.join("\n")),
        )
    })
}

pub fn instance(ctx: &Ctx, id: &str) -> Result<std::sync::Arc<InstanceSpec>, (i32, String)> {
    let cfg = load(ctx)?;
    match cfg.get(id) {
        Some(s) => Ok(s.clone()),
        None => {
            let names: Vec<&str> = cfg.instances.keys().map(String::as_str).collect();
            let hint = config::reader::did_you_mean(id, &names)
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_else(|| format!("; known: {}", names.join(", ")));
            Err((
                2,
                format!("unknown instance `{id}` in {}{hint}", ctx.config.display()),
            ))
        }
    }
}

pub fn load_check(ctx: &Ctx) -> Result<(), (i32, String)> {
    load(ctx).map(|_| ())
}

/// The instance IDs of the instances file (none if it does not load).
pub fn instance_ids(ctx: &Ctx) -> Vec<String> {
    load(ctx)
        .map(|cfg| cfg.instances.keys().cloned().collect())
        .unwrap_or_default()
}

pub fn known_instance(ctx: &Ctx, id: &str) -> Result<(), (i32, String)> {
    instance(ctx, id).map(|_| ())
}
