//! Says whether the eBPF ingress filter can be used on this machine, as ringswitch will at
//! start-up: `cargo run -p ringswitch-bpf --example probe`.

fn main() {
    match ringswitch_bpf::probe() {
        Ok(()) => println!("the eBPF ingress filter is available"),
        Err(why) => {
            println!("{why}");
            std::process::exit(1);
        }
    }
}
