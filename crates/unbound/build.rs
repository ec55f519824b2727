//! Links the system libunbound and the libevent it was built with, both
//! found through pkg-config (Debian's `libunbound-dev` and `libevent-dev`).

fn main() {
    for (library, version) in [("libunbound", "1.13"), ("libevent", "2.1")] {
        if let Err(error) = pkg_config::Config::new().atleast_version(version).probe(library) {
            eprintln!(
                "shieldns-unbound: {library} not found through pkg-config: {error}\n\
                 install it with: apt-get install -y libunbound-dev libevent-dev pkg-config"
            );
            std::process::exit(1);
        }
    }
}
