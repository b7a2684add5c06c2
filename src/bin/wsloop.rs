//! The `wsloop` server binary: `wsloop echo` and `wsloop rooms`. The flags are in
//! `wsloop/args.rs`, `--help` lists them all.

#[path = "wsloop/args.rs"]
mod args;
#[path = "cli/mod.rs"]
mod cli;
#[path = "wsloop/logging.rs"]
mod logging;

use args::{KeyFiles, Mode, RedisSetup};
use std::process::ExitCode;
use wsloop::server::{Echo, Rooms, Server};

/// Installs the Redis bridge when --redis was given.
fn attach_redis(server: Server, redis: Option<RedisSetup>) -> std::io::Result<Server> {
    let Some(cfg) = redis else {
        return Ok(server);
    };
    #[cfg(feature = "redis")]
    {
        let bridge = wsloop::redis::RedisBridge::start(cfg, &server.handle().publisher())?;
        Ok(server.with_bridge(bridge))
    }
    #[cfg(not(feature = "redis"))]
    match cfg {}
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let args = match args::parse(&argv) {
        Ok(a) => a,
        Err(exit) => return exit.into(),
    };
    logging::init(args.log_format);
    let server = match Server::bind(args.listen.as_str(), args.cfg.clone()) {
        Ok(s) => s,
        Err(e) => {
            log::error!(listen = args.listen.as_str(); "cannot listen on {}: {e}", args.listen);
            return ExitCode::from(1);
        }
    };
    let server = match attach_redis(server, args.redis) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot start the Redis bridge: {e}");
            return ExitCode::from(1);
        }
    };
    let handle = server.handle();
    let keys = args.key_files.clone().zip(args.cfg.jwt.clone());
    install_signal_handlers(handle.clone(), keys);
    let scheme = if args.tls.is_some() { "wss" } else { "ws" };
    install_reload(args.tls.clone());
    if let Some(a) = server.admin_addr() {
        log::info!(admin:% = a; "admin: http://{a}/metrics and /healthz");
    }
    if let Some(v) = &args.cfg.jwt {
        log::info!("JWT required on every path: {} keys (SIGHUP re-reads them)", v.keys().keys().len());
    }
    let (mode, addr, workers) = (args.mode.name(), server.local_addr(), args.cfg.workers);
    // Tests and scripts read the address from this line: "listening on ws://ADDR" (wss://
    // with --tls-cert; the admin listener stays plain http).
    log::info!(mode, listen:% = addr, workers; "wsloop {mode} listening on {scheme}://{addr} with {workers} workers");
    let result = match args.mode {
        Mode::Echo => server.run(|_| Echo),
        Mode::Rooms => server.run(|_| Rooms),
    };
    match result {
        Ok(()) => {
            log::info!("wsloop stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("wsloop failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// SIGHUP: reload --tls-cert and --tls-key; new handshakes use the new pair, open
/// connections keep theirs. A bad file keeps the old pair.
fn install_reload(tls: Option<args::TlsSetup>) {
    let Some(store) = tls else {
        return;
    };
    #[cfg(feature = "tls")]
    {
        let mut signals = match signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("cannot install the SIGHUP handler: {e}");
                return;
            }
        };
        std::thread::Builder::new()
            .name("wsloop-reload".into())
            .spawn(move || {
                for _ in signals.forever() {
                    match store.reload() {
                        Ok(()) => log::info!("SIGHUP: reloaded the TLS certificate and key"),
                        Err(e) => log::error!("SIGHUP: TLS reload failed, keeping the current pair: {e}"),
                    }
                }
            })
            .ok();
    }
    #[cfg(not(feature = "tls"))]
    match store {}
}

/// SIGHUP: re-reads every JWT key file and the JWKS. The new set replaces the old one
/// whole, or, when any file fails, not at all: the old keys stay and the reason is
/// logged. Open connections are not touched (their expiry timers stand).
fn reload_keys(keys: &Option<(KeyFiles, std::sync::Arc<wsloop::auth::JwtVerifier>)>) {
    let Some((files, verifier)) = keys else {
        return;
    };
    match files.load() {
        Ok(set) => {
            let n = set.keys().len();
            verifier.replace_keys(set);
            log::info!(keys = n; "SIGHUP: JWT keys reloaded, {n} keys in use");
        }
        Err(e) => log::error!("SIGHUP: JWT keys not reloaded, the previous keys stay in use: {e}"),
    }
}

/// SIGTERM/SIGINT: graceful shutdown; a second one exits at once. SIGHUP: reloads.
fn install_signal_handlers(
    handle: wsloop::Handle,
    keys: Option<(KeyFiles, std::sync::Arc<wsloop::auth::JwtVerifier>)>,
) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("cannot install signal handlers: {e}");
            return;
        }
    };
    std::thread::Builder::new()
        .name("wsloop-signals".into())
        .spawn(move || {
            let mut seen = false;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    reload_keys(&keys);
                    continue;
                }
                if seen {
                    log::warn!(signal = sig; "second signal ({sig}): exiting now");
                    std::process::exit(1);
                }
                seen = true;
                log::info!(signal = sig; "signal {sig}: shutting down gracefully (again to exit now)");
                handle.shutdown();
            }
        })
        .ok();
}
