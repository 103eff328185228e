//! Regions as network namespaces, for fault tests.
//!
//! A [`Topology`] owns a small index N (1..=250), taken with an exclusive `flock` on
//! `/tmp/drmesh-netns/N.lock`, so tests in the same or other processes run side by side;
//! a dead test's lock is free again, and whoever takes its index removes what it left
//! behind. It makes two bridges in the root namespace, "control" `dmcN` (198.18.N.1/24)
//! and "mesh" `dmmN` (198.19.N.1/24), and per region i (1-based) a namespace `dmN-REGION`
//! with `eth0` on the control bridge (198.18.N.(10+i)) and `eth1` on the mesh bridge
//! (198.19.N.(10+i)). There are no default routes and nothing routes between the two
//! /24s: a namespace reaches the root namespace (coordinator, DNS, the test's clients)
//! only on control, and other namespaces on either link.
//!
//! Faults set the root end of a region's veth pairs down (a partition); the namespace
//! keeps its addresses and its established TCP connections, which just stop getting
//! answers. Dropping the topology kills every process left in its namespaces and deletes
//! namespaces, veths and bridges.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, Uid};

use crate::Proc;

const LOCK_DIR: &str = "/tmp/drmesh-netns";
const MAX_INDEX: u8 = 250;
const NEED: &str = "the network-namespace tests need root and iproute2: run them as root; apt-get install -y iproute2";
/// How long a fault or heal may take to show in `ip link`.
const LINK_TIMEOUT: Duration = Duration::from_secs(5);

/// One region: its namespace and the names of its veths' root ends.
#[derive(Clone, Debug)]
struct Region {
    name: String,
    ns: String,
    index: u8,
    control_veth: String,
    mesh_veth: String,
}

/// Regions as network namespaces on a control and a mesh bridge. See the module docs.
pub struct Topology {
    index: u8,
    regions: Vec<Region>,
    _lock: Flock<fs::File>,
}

/// Runs `ip ARGS`; stdout, or the command and its stderr.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e} ({NEED})", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip ARGS` that must work (set-up).
fn ip_ok(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("set up the test network: {e}");
    }
}

/// A region name as it may appear in a namespace name.
fn sanitize(region: &str) -> String {
    let s: String = region
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if s.is_empty() {
        "region".into()
    } else {
        s
    }
}

/// The index in a name `dm<N><tail>` where tail starts with one of `tails` (`"-"` for
/// namespaces, `"c"`/`"m"` for veths), if any.
fn index_of(name: &str, tails: &[char]) -> Option<u8> {
    let rest = name.strip_prefix("dm")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = rest[digits.len()..].chars().next()?;
    if !tails.contains(&after) {
        return None;
    }
    digits.parse().ok()
}

/// SIGKILLs every process in namespace `ns` and waits (bounded) until none is left.
fn kill_all_in(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids: Vec<i32> = ip(&["netns", "pids", ns])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        let alive: Vec<i32> = pids
            .into_iter()
            .filter(|p| {
                // Zombies (killed children not yet reaped by their parent) are gone enough.
                fs::read_to_string(format!("/proc/{p}/stat"))
                    .map(|s| {
                        !s.rsplit(')')
                            .next()
                            .unwrap_or("")
                            .trim_start()
                            .starts_with('Z')
                    })
                    .unwrap_or(false)
            })
            .collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return;
        }
        for p in alive {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes namespaces, veths and bridges of index `n` (a dead test's, or ours).
fn remove_index(n: u8) {
    let _ = ip(&["link", "del", &format!("dmc{n}")]);
    let _ = ip(&["link", "del", &format!("dmm{n}")]);
    for line in ip(&["netns", "list"]).unwrap_or_default().lines() {
        let Some(ns) = line.split_whitespace().next() else {
            continue;
        };
        if index_of(ns, &['-']) == Some(n) {
            kill_all_in(ns);
            let _ = ip(&["netns", "del", ns]);
        }
    }
    for line in ip(&["-o", "link", "show"]).unwrap_or_default().lines() {
        // "7: dm3c1@if6: <...>"
        let Some(name) = line.split(':').nth(1) else {
            continue;
        };
        let name = name.trim().split('@').next().unwrap_or("");
        if index_of(name, &['c', 'm']) == Some(n) {
            let _ = ip(&["link", "del", name]);
        }
    }
}

impl Topology {
    /// Builds the regions' namespaces and links (all up). Panics with an install hint if
    /// this is not root or `ip netns` does not work.
    pub fn new(regions: &[&str]) -> Topology {
        assert!(Uid::effective().is_root(), "{NEED}");
        if let Err(e) = ip(&["netns", "list"]) {
            panic!("{NEED}: {e}");
        }
        assert!(
            !regions.is_empty() && regions.len() <= 200,
            "1 to 200 regions, not {}",
            regions.len()
        );
        let (index, lock) = Self::take_index();
        remove_index(index);
        let mut topo = Topology {
            index,
            regions: Vec::new(),
            _lock: lock,
        };
        // From here a panic drops `topo`, which removes what was made so far.
        topo.build(regions);
        topo
    }

    /// The first free index, locked until the returned guard drops.
    fn take_index() -> (u8, Flock<fs::File>) {
        fs::create_dir_all(LOCK_DIR).unwrap_or_else(|e| panic!("create {LOCK_DIR}: {e}"));
        for n in 1..=MAX_INDEX {
            let path = Path::new(LOCK_DIR).join(format!("{n}.lock"));
            let file = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                let _ = fs::write(&path, format!("{}\n", std::process::id()));
                return (n, lock);
            }
        }
        panic!("all {MAX_INDEX} test network indexes under {LOCK_DIR} are taken");
    }

    fn build(&mut self, regions: &[&str]) {
        let n = self.index;
        let (control, mesh) = (self.control_bridge(), self.mesh_bridge());
        for (bridge, addr) in [
            (&control, self.host_control_ip()),
            (&mesh, self.host_mesh_ip()),
        ] {
            ip_ok(&["link", "add", bridge, "type", "bridge"]);
            ip_ok(&["addr", "add", &format!("{addr}/24"), "dev", bridge]);
            ip_ok(&["link", "set", bridge, "up"]);
        }
        for (i, name) in regions.iter().enumerate() {
            let i = u8::try_from(i + 1).expect("at most 200 regions");
            let region = Region {
                name: name.to_string(),
                ns: format!("dm{n}-{}", sanitize(name)),
                index: i,
                control_veth: format!("dm{n}c{i}"),
                mesh_veth: format!("dm{n}m{i}"),
            };
            assert!(
                self.regions.iter().all(|r| r.ns != region.ns),
                "two regions named like {name}"
            );
            ip_ok(&["netns", "add", &region.ns]);
            self.regions.push(region.clone());
            let ns = region.ns.as_str();
            ip_ok(&["-n", ns, "link", "set", "lo", "up"]);
            for (veth, inner, bridge, net) in [
                (&region.control_veth, "eth0", &control, 18),
                (&region.mesh_veth, "eth1", &mesh, 19),
            ] {
                ip_ok(&[
                    "link", "add", veth, "type", "veth", "peer", "name", inner, "netns", ns,
                ]);
                ip_ok(&["link", "set", veth, "master", bridge, "up"]);
                let addr = format!("198.{net}.{n}.{}/24", 10 + u16::from(i));
                ip_ok(&["-n", ns, "addr", "add", &addr, "dev", inner]);
                ip_ok(&["-n", ns, "link", "set", inner, "up"]);
            }
        }
        for r in self.regions.clone() {
            self.wait_links(&r, true, true);
        }
    }

    /// This topology's index N (the third octet of its addresses).
    pub fn index(&self) -> u8 {
        self.index
    }

    pub fn control_bridge(&self) -> String {
        format!("dmc{}", self.index)
    }

    pub fn mesh_bridge(&self) -> String {
        format!("dmm{}", self.index)
    }

    /// 198.18.N.1, the root namespace on the control bridge: where the coordinator, DNS
    /// and the test's clients listen or connect from.
    pub fn host_control_ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, self.index, 1))
    }

    /// 198.19.N.1, the root namespace on the mesh bridge.
    pub fn host_mesh_ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 19, self.index, 1))
    }

    fn region(&self, region: &str) -> &Region {
        self.regions
            .iter()
            .find(|r| r.name == region)
            .unwrap_or_else(|| panic!("no region {region} in this topology"))
    }

    /// The region names, in the order given to [`Topology::new`].
    pub fn regions(&self) -> Vec<&str> {
        self.regions.iter().map(|r| r.name.as_str()).collect()
    }

    /// The region's address on the control bridge (its `eth0`).
    pub fn control_ip(&self, region: &str) -> IpAddr {
        let r = self.region(region);
        IpAddr::V4(Ipv4Addr::new(198, 18, self.index, 10 + r.index))
    }

    /// The region's address on the mesh bridge (its `eth1`).
    pub fn mesh_ip(&self, region: &str) -> IpAddr {
        let r = self.region(region);
        IpAddr::V4(Ipv4Addr::new(198, 19, self.index, 10 + r.index))
    }

    /// The region's namespace name (`dmN-REGION`).
    pub fn ns(&self, region: &str) -> &str {
        &self.region(region).ns
    }

    /// The prefix that runs a program in the region's namespace: `ip netns exec NS`
    /// (e.g. for `PgNetwork::command_prefix`).
    /// Where a region's PostgreSQL listens: its control and mesh addresses, reached by
    /// clients on the control address, trusting the namespaces' networks, started inside
    /// the namespace.
    pub fn pg_network(&self, region: &str) -> drmesh_pg::local::PgNetwork {
        drmesh_pg::local::PgNetwork {
            listen_addresses: vec![self.control_ip(region), self.mesh_ip(region)],
            host: Some(self.control_ip(region)),
            trust: vec!["198.18.0.0/15".into()],
            command_prefix: self.exec_prefix(region),
        }
    }

    pub fn exec_prefix(&self, region: &str) -> Vec<String> {
        ["ip", "netns", "exec", self.ns(region)]
            .map(String::from)
            .to_vec()
    }

    /// `ip netns exec NS program`: add arguments, then run it.
    pub fn command(&self, region: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns(region)]).arg(program);
        cmd
    }

    /// Starts `program ARGS` in the region's namespace as a [`Proc`] (`ip netns exec`
    /// execs the program, so the child's pid is the program's).
    pub fn spawn(
        &self,
        region: &str,
        name: &str,
        program: &Path,
        args: &[&str],
        log: &Path,
    ) -> Proc {
        let program = program.to_str().expect("program path is UTF-8");
        let mut full = vec!["netns", "exec", self.ns(region), program];
        full.extend_from_slice(args);
        Proc::spawn(name, Path::new("ip"), &full, log)
    }

    /// Runs `f` on a thread inside the region's namespace (sockets it makes stay there).
    pub fn in_ns<T: Send>(&self, region: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.ns(region));
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("enter {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Whether a TCP connection to `to` completes within `timeout`, from the region's
    /// namespace (`Some(region)`) or the root namespace (`None`).
    pub fn can_connect(&self, from: Option<&str>, to: SocketAddr, timeout: Duration) -> bool {
        let attempt = move || TcpStream::connect_timeout(&to, timeout).is_ok();
        match from {
            Some(region) => self.in_ns(region, attempt),
            None => attempt(),
        }
    }

    /// Partition: both of the region's links down (on the root side).
    pub fn cut(&self, region: &str) {
        let r = self.region(region).clone();
        for veth in [&r.control_veth, &r.mesh_veth] {
            ip_ok(&["link", "set", veth, "down"]);
        }
        self.wait_links(&r, false, false);
    }

    /// Only the region's control link down: it loses the root namespace (coordinator,
    /// DNS) but keeps the mesh.
    pub fn cut_control(&self, region: &str) {
        let r = self.region(region).clone();
        ip_ok(&["link", "set", &r.control_veth, "down"]);
        self.wait_links(&r, false, true);
    }

    /// Both of the region's links up again.
    pub fn heal(&self, region: &str) {
        let r = self.region(region).clone();
        for veth in [&r.control_veth, &r.mesh_veth] {
            ip_ok(&["link", "set", veth, "up"]);
        }
        self.wait_links(&r, true, true);
        self.flush_neighbours(&r);
    }

    /// Forgets ARP entries to and from the region: ones left INCOMPLETE or FAILED by a
    /// cut would otherwise delay the first packets after a heal by up to a second (the
    /// ARP retransmit time).
    fn flush_neighbours(&self, r: &Region) {
        let _ = ip(&["-n", &r.ns, "neigh", "flush", "dev", "eth0"]);
        let _ = ip(&["-n", &r.ns, "neigh", "flush", "dev", "eth1"]);
        let (control, mesh) = (self.control_ip(&r.name), self.mesh_ip(&r.name));
        for target in [control.to_string(), mesh.to_string()] {
            let _ = ip(&["neigh", "flush", "to", &target]);
            for other in self.regions.iter().filter(|o| o.ns != r.ns) {
                let _ = ip(&["-n", &other.ns, "neigh", "flush", "to", &target]);
            }
        }
    }

    /// Whether the region's control and mesh links are up (root end, namespace end and
    /// bridge port forwarding).
    pub fn links_up(&self, region: &str) -> (bool, bool) {
        let r = self.region(region);
        (
            link_up(&r.ns, &r.control_veth, "eth0"),
            link_up(&r.ns, &r.mesh_veth, "eth1"),
        )
    }

    /// Waits until the links are as wanted; panics after [`LINK_TIMEOUT`].
    fn wait_links(&self, r: &Region, control: bool, mesh: bool) {
        let deadline = Instant::now() + LINK_TIMEOUT;
        loop {
            let now = (
                link_up(&r.ns, &r.control_veth, "eth0"),
                link_up(&r.ns, &r.mesh_veth, "eth1"),
            );
            if now == (control, mesh) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "links of {} are (control, mesh) up = {now:?}, not {:?}, after {LINK_TIMEOUT:?}",
                r.name,
                (control, mesh)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A veth pair is up when its root end is up and forwarding on its bridge and its
/// namespace end has carrier (`state UP`); down when either end is not up.
fn link_up(ns: &str, veth: &str, inner: &str) -> bool {
    let sys = Path::new("/sys/class/net").join(veth);
    let oper = fs::read_to_string(sys.join("operstate")).unwrap_or_default();
    // 3 = BR_STATE_FORWARDING
    let port = fs::read_to_string(sys.join("brport/state")).unwrap_or_default();
    let inside = ip(&["-n", ns, "-o", "link", "show", inner]).unwrap_or_default();
    oper.trim() == "up" && port.trim() == "3" && inside.contains("state UP")
}

impl Drop for Topology {
    fn drop(&mut self) {
        for r in &self.regions {
            kill_all_in(&r.ns);
        }
        for r in &self.regions {
            let _ = ip(&["link", "del", &r.control_veth]);
            let _ = ip(&["link", "del", &r.mesh_veth]);
            let _ = ip(&["netns", "del", &r.ns]);
        }
        let _ = ip(&["link", "del", &self.control_bridge()]);
        let _ = ip(&["link", "del", &self.mesh_bridge()]);
        // Whatever a half-built topology left (e.g. a veth made before a panic).
        remove_index(self.index);
        // The lock is released when `_lock` drops, after this.
    }
}

/// `/proc/sys/net/ipv4/ip_forward` of the root namespace (the topology never sets it;
/// with it at 0 nothing routes between control and mesh).
pub fn root_ip_forward() -> String {
    fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_indexes() {
        assert_eq!(sanitize("us-west-2"), "us-west-2");
        assert_eq!(sanitize("EU_West.1"), "eu-west-1");
        assert_eq!(index_of("dm12-us-west-2", &['-']), Some(12));
        assert_eq!(index_of("dm12c3", &['c', 'm']), Some(12));
        assert_eq!(index_of("dm1m2", &['c', 'm']), Some(1));
        assert_eq!(index_of("dmc12", &['c', 'm']), None);
        assert_eq!(index_of("dm12-a", &['c', 'm']), None);
        assert_eq!(index_of("eth0", &['-']), None);
    }
}
