//! spiffe-csi-driver command line.

use clap::Parser;

/// CSI node plugin that mounts the SPIRE agent's Workload API socket directory into
/// pods (`csi: {driver: csi.spiffe.io, readOnly: true}`), so workloads need no hostPath.
///
/// The node service is not part of this release yet; this binary only reports its
/// version and the plugin name it will register.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Print the default CSI plugin name and exit.
    #[arg(long)]
    print_plugin_name: bool,
}

fn main() {
    let cli = Cli::parse();
    if cli.print_plugin_name {
        println!("{}", spiffe_csi_driver::DEFAULT_PLUGIN_NAME);
        return;
    }
    eprintln!(
        "spiffe-csi-driver {}: the CSI node service is not implemented in this release; see --help",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
