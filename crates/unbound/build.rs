//! Links the system libunbound found through pkg-config (Debian's
//! `libunbound-dev`; its `.pc` file also needs `libevent-dev` installed).

fn main() {
    if let Err(error) = pkg_config::Config::new().atleast_version("1.13").probe("libunbound") {
        eprintln!(
            "shieldns-unbound: libunbound not found through pkg-config: {error}\n\
             install it with: apt-get install -y libunbound-dev libevent-dev pkg-config"
        );
        std::process::exit(1);
    }
}
