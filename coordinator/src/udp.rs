//! The UDP sockets of this host as the kernel lists them (`/proc/net/udp`, `udp6`), and
//! the QUIC socket's receive queue read from there: how many bytes of datagrams wait
//! that the coordinator has not read yet (`state::HearingWatch`). Linux only; elsewhere
//! nothing is listed and the queue is unknown.

/// One UDP socket of this host as `/proc/net/udp` and `udp6` list it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpSocketEntry {
    pub local_port: u16,
    pub inode: u64,
    /// Bytes queued unread, as the kernel charges them against the receive buffer.
    pub rx_queue: u64,
    /// Datagrams dropped so far because the receive buffer was full.
    pub drops: u64,
}

/// Every UDP socket of this host (Linux; empty elsewhere).
pub fn udp_sockets() -> Vec<UdpSocketEntry> {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(parse_udp_line)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `sl local rem st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ref pointer drops`
fn parse_udp_line(line: &str) -> Option<UdpSocketEntry> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let (_, port) = f.get(1)?.rsplit_once(':')?;
    let (_, rx) = f.get(4)?.split_once(':')?;
    Some(UdpSocketEntry {
        local_port: u16::from_str_radix(port, 16).ok()?,
        inode: f.get(9)?.parse().ok()?,
        rx_queue: u64::from_str_radix(rx, 16).ok()?,
        drops: f.last()?.parse().ok()?,
    })
}

/// The QUIC socket's receive queue: the bytes of datagrams the kernel holds that quinn
/// has not read yet, found by the socket's inode in `/proc/net/udp` (or `udp6`, by the
/// socket's family). Read on every liveness tick: one file, and only the socket's line
/// is parsed.
pub struct ReceiveQueue {
    inode: u64,
    table: &'static str,
}

impl ReceiveQueue {
    /// `None` where the socket's inode cannot be read (not Linux).
    pub fn new(socket: &std::net::UdpSocket) -> Option<Self> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let fd = socket.as_raw_fd();
        let meta = std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()?;
        let table = match socket.local_addr().ok()? {
            std::net::SocketAddr::V4(_) => "/proc/net/udp",
            std::net::SocketAddr::V6(_) => "/proc/net/udp6",
        };
        Some(Self {
            inode: meta.ino(),
            table,
        })
    }

    /// The bytes queued now; `None` if the socket is not listed.
    pub fn queued_bytes(&self) -> Option<usize> {
        let text = std::fs::read_to_string(self.table).ok()?;
        let inode = self.inode.to_string();
        text.lines()
            .skip(1)
            .filter(|l| l.split_whitespace().nth(9) == Some(inode.as_str()))
            .find_map(parse_udp_line)
            .map(|s| s.rx_queue as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proc_net_udp_line_gives_port_inode_queue_and_drops() {
        let line = "  812: 0100007F:D74C 00000000:0000 07 00000000:00F3A000 00:00000000 \
                    00000000     0        0 5546781 2 0000000000000000 21984";
        assert_eq!(
            parse_udp_line(line),
            Some(UdpSocketEntry {
                local_port: 0xD74C,
                inode: 5546781,
                rx_queue: 0xF3A000,
                drops: 21984,
            })
        );
        assert_eq!(parse_udp_line("  sl  local_address rem_address"), None);
    }

    #[test]
    fn the_receive_queue_of_a_bound_socket_is_found_and_counts_what_waits() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let queue = ReceiveQueue::new(&socket).expect("the socket's inode");
        assert_eq!(queue.queued_bytes(), Some(0));
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = socket.local_addr().expect("address");
        for _ in 0..10 {
            sender.send_to(&[0u8; 100], to).expect("send");
        }
        assert!(
            queue.queued_bytes().is_some_and(|b| b >= 1000),
            "{:?}",
            queue.queued_bytes()
        );
    }
}
