//! containerd-shim-rustshim-v2: argv -> action.

use std::process::ExitCode;

use rustshim::{bootstrap, cli, logger, server, version};

/// Set by scripts/build-release.sh's flags for this binary only.
const STATIC_BUILD: bool = cfg!(target_feature = "crt-static");

fn main() -> ExitCode {
    let flags = match cli::parse(std::env::args().skip(1)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("containerd-shim-rustshim-v2: {e}");
            return ExitCode::from(2);
        }
    };
    match flags.action {
        cli::Action::Version => {
            println!("containerd-shim-rustshim-v2:");
            println!("  Version:  {}", version::VERSION);
            println!("  Revision: {}", version::GIT_REVISION);
            println!("  Build:    {}", version::profile(STATIC_BUILD));
            println!("  Runtime:  io.containerd.rustshim.v2");
            ExitCode::SUCCESS
        }
        cli::Action::Info => match bootstrap::info(&version::profile(STATIC_BUILD)) {
            Ok(bytes) => {
                bootstrap::print(&bytes);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("containerd-shim-rustshim-v2 -info: {e}");
                ExitCode::FAILURE
            }
        },
        cli::Action::Start => match bootstrap::start(&flags) {
            Ok(reply) => {
                bootstrap::print(&reply);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("containerd-shim-rustshim-v2 start: {e}");
                ExitCode::FAILURE
            }
        },
        cli::Action::Delete => match bootstrap::delete(&flags) {
            Ok(bytes) => {
                bootstrap::print(&bytes);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("containerd-shim-rustshim-v2 delete: {e}");
                ExitCode::FAILURE
            }
        },
        cli::Action::Serve => serve(&flags),
    }
}

fn serve(flags: &cli::Flags) -> ExitCode {
    logger::init(flags.debug, &flags.namespace, &flags.id);
    log::info!("rustshim {} starting", version::describe(STATIC_BUILD));
    if let Err(e) = server::prepare_process() {
        log::error!("cannot become subreaper: {e}");
        return ExitCode::FAILURE;
    }
    // A shim watches a handful of fds: a small event buffer instead of tokio's 1024 entries.
    // The blocking pool serves `file://` writes and rootfs mounts: a few threads, gone soon
    // after the work stops, so an idle shim is back to its one thread.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_io_events_per_tick(64)
        .max_blocking_threads(8)
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = server::Config {
        namespace: flags.namespace.clone(),
        ttrpc_address: cli::ttrpc_address(flags),
        listener_fd: bootstrap::LISTENER_FD,
        socket_path: flags.socket.clone(),
    };
    match rt.block_on(server::run(cfg)) {
        Ok(()) => {
            log::info!("shim exited");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
