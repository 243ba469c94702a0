//! `reload` and SIGHUP: the instances file read again. Running instances
//! are not touched; an invalid file changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Daemon;
use super::fsm::State;
use super::instance::Inst;
use crate::config::{self, Trust};

/// A reload that changed nothing: the file's diagnostics, one per line.
#[derive(Debug, thiserror::Error)]
#[error("the instances file is invalid; nothing changed:\n{0}")]
pub struct ReloadRefused(String);

impl Daemon {
    /// Rereads the instances file. Running instances are not touched: a
    /// changed definition waits for their next start; an invalid file
    /// changes nothing.
    pub fn reload(&mut self) -> Result<String, ReloadRefused> {
        let r = self.reread();
        crate::util::give_back_memory();
        r
    }

    fn reread(&mut self) -> Result<String, ReloadRefused> {
        let cfg = match config::load(&self.opts.config_dir, Trust::for_current_user()) {
            Ok(c) => c,
            Err(diags) => {
                let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
                return Err(ReloadRefused(text.join("\n")));
            }
        };
        let now = self.host.now();
        let mut added = Vec::new();
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        let new_ids: BTreeMap<&String, &Arc<crate::model::InstanceSpec>> =
            cfg.instances.iter().collect();
        let mut release = Vec::new();
        for (idx, inst) in self.insts.iter_mut().enumerate() {
            match new_ids.get(&inst.spec.id) {
                None => {
                    if !inst.removed {
                        inst.removed = true;
                        removed.push(inst.spec.id.clone());
                    }
                    release.push(idx);
                }
                Some(spec) => {
                    inst.removed = false;
                    let current = inst.next_spec.as_ref().unwrap_or(&inst.spec);
                    if current.fingerprint() != spec.fingerprint() {
                        changed.push(inst.spec.id.clone());
                        inst.next_spec = Some((*spec).clone());
                        if inst.state() == State::Stopped || inst.state() == State::Failed {
                            inst.apply_next_spec();
                        }
                    }
                }
            }
        }
        for idx in release {
            self.release_spare_cgroup(idx);
        }
        for (id, spec) in &cfg.instances {
            if !self.index.contains_key(id) {
                self.index.insert(id.clone(), self.insts.len());
                self.insts.push(Inst::new(spec.clone(), now));
                added.push(id.clone());
            }
        }
        self.config = Arc::new(cfg);
        self.sync_addresses();
        let msg = format!(
            "reloaded: {} added, {} changed (applied at their next start), {} removed (refused new starts)",
            list(&added),
            list(&changed),
            list(&removed)
        );
        tracing::info!("{msg}");
        Ok(msg)
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(" ")
    }
}
