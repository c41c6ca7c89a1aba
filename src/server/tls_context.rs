//! The TLS material shared by every new session: credentials built from the
//! configured (or generated) certificates, and the compiled priorities.

use std::fs;
use std::rc::Rc;

use crate::config::{CertPair, Config};
use crate::default_cert;
use crate::tls::{Credentials, Priority, ServerSession, TlsError};

pub struct TlsContext {
    credentials: Rc<Credentials>,
    priority: Rc<Priority>,
}

impl TlsContext {
    pub fn load(config: &Config) -> Result<TlsContext, String> {
        let priority =
            Priority::new(&config.tls_priority).map_err(|e| format!("--tls-priority: {e}"))?;
        let pairs = if config.certs.is_empty() {
            vec![default_cert::ensure(&config.state_dir, &config.hostname)?]
        } else {
            config.certs.clone()
        };
        let mut credentials = Credentials::new().map_err(|e| e.to_string())?;
        for pair in &pairs {
            add_pair(&mut credentials, pair)?;
        }
        Ok(TlsContext {
            credentials: Rc::new(credentials),
            priority: Rc::new(priority),
        })
    }

    pub fn session(&self) -> Result<ServerSession, TlsError> {
        ServerSession::new(Rc::clone(&self.credentials), Rc::clone(&self.priority))
    }
}

fn add_pair(credentials: &mut Credentials, pair: &CertPair) -> Result<(), String> {
    let read = |path: &std::path::Path| {
        fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
    };
    let chain = read(&pair.cert)?;
    let key = read(&pair.key)?;
    credentials
        .add_pem(&chain, &key)
        .map(|index| {
            log::info!(
                "certificate {} (key {}) loaded as #{index}",
                pair.cert.display(),
                pair.key.display()
            )
        })
        .map_err(|e| format!("{} with {}: {e}", pair.cert.display(), pair.key.display()))
}
