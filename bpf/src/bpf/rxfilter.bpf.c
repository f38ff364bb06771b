// SPDX-License-Identifier: MIT OR Apache-2.0
//
// ringswitch's ingress filter (issue 14): a socket filter, attached to a tap
// (TUNSETFILTEREBPF) or to a datagram socket (SO_ATTACH_BPF), that drops a frame
// arriving on port P when no other port of P's domain would accept it. It must
// decide exactly as `ingress_pass` in switch/src/rxfilter.rs; bpf/README.md
// describes the maps, bpf/src/maps.rs writes them.
//
// One instance is loaded per attached port, sharing the domain's maps; the port's
// bit and where the Ethernet frame starts in the skb are read-only data set
// before load.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define MAX_VLAN 4096
#define TPID_8021Q_HI 0x81
#define TPID_8021Q_LO 0x00

// Keep in step with bpf/src/maps.rs (`DomainMasks`, `PortConf`, `Counts`).
struct domain_masks {
	__u64 ports;        // the ports of the domain
	__u64 pass_all;     // non-zero: pass everything (learned table overflowed)
	__u64 promisc;      // promiscuous ports
	__u64 uni_all;      // unicast `all`, or `normal` with unicast overflow
	__u64 uni_normal;   // unicast `normal`, no overflow: main MAC + unicast table
	__u64 multi_all;    // multicast `all`, or `normal` with multicast overflow
	__u64 multi_normal; // multicast `normal`, no overflow: multicast table
	__u64 vlan_all;     // vlan `all`
	__u64 vlan_normal;  // vlan `normal`: the vlan table decides
};

struct mac_key {
	__u8 addr[6];
	__u8 pad[2]; // always zero
};

struct counts {
	__u64 passed;
	__u64 dropped;
};

struct port_conf {
	__u32 index;   // the port's bit number, 0..63
	__u32 eth_off; // offset of the Ethernet frame: 0 for taps, 8 for UDP
};

const volatile struct port_conf conf = {};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct domain_masks);
} masks SEC(".maps");

// MAC -> ports whose filter lists it: for `uni_normal` ports their main MAC and
// unicast table (unicast addresses only), for `multi_normal` ports their
// multicast table (multicast addresses only). The kind of the key says which.
// Room for two configurations of LISTED_CAPACITY (maps.rs) each: an update
// goes through the union of the old and the new.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * 64 * 65);
	__type(key, struct mac_key);
	__type(value, __u64);
} listed SEC(".maps");

// vid -> `vlan_normal` ports whose vlan table has it.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_VLAN);
	__type(key, __u32);
	__type(value, __u64);
} vlans SEC(".maps");

// Learned MAC -> the bit of the port it was learned on.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096); // set from userspace before the maps are created
	__type(key, struct mac_key);
	__type(value, __u64);
} learned SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct counts);
} counters SEC(".maps");

static __always_inline int is_multicast(const struct mac_key *k)
{
	return k->addr[0] & 1;
}

static __always_inline int is_broadcast(const struct mac_key *k)
{
	return (k->addr[0] & k->addr[1] & k->addr[2] & k->addr[3] & k->addr[4] &
		k->addr[5]) == 0xff;
}

static __always_inline int wanted(struct __sk_buff *skb, __u32 off, __u64 self)
{
	struct mac_key dst = {};
	__u8 tag[4];
	__u32 key = 0;
	__u32 len;
	__u64 others, vlan_ok = ~0ULL, kind_ok, *hit;
	struct domain_masks *m;

	// Shorter than an Ethernet header: the switch reads it and counts it (a runt).
	if (skb->len < off + 14)
		return 1;
	len = skb->len - off;
	if (bpf_skb_load_bytes(skb, off, dst.addr, 6) < 0)
		return 0;
	if (is_broadcast(&dst))
		return 1;

	m = bpf_map_lookup_elem(&masks, &key);
	if (!m)
		return 0;
	if (m->pass_all)
		return 1;
	others = m->ports & ~self;

	hit = bpf_map_lookup_elem(&learned, &dst);
	if (hit && (*hit & others))
		return 1;

	if (len >= 16) {
		if (bpf_skb_load_bytes(skb, off + 12, tag, 4) < 0)
			return 0;
		if (tag[0] == TPID_8021Q_HI && tag[1] == TPID_8021Q_LO) {
			__u32 vid = ((__u32)(tag[2] & 0x0f) << 8) | tag[3];

			vlan_ok = m->vlan_all;
			hit = bpf_map_lookup_elem(&vlans, &vid);
			if (hit)
				vlan_ok |= m->vlan_normal & *hit;
		}
	}

	hit = bpf_map_lookup_elem(&listed, &dst);
	if (is_multicast(&dst))
		kind_ok = m->multi_all | (hit ? m->multi_normal & *hit : 0);
	else
		kind_ok = m->uni_all | (hit ? m->uni_normal & *hit : 0);

	return (others & (m->promisc | (vlan_ok & kind_ok))) != 0;
}

SEC("socket")
int rxfilter(struct __sk_buff *skb)
{
	__u32 index = conf.index & 63;
	int pass = wanted(skb, conf.eth_off, 1ULL << index);
	struct counts *c = bpf_map_lookup_elem(&counters, &index);

	if (c) {
		if (pass)
			c->passed++;
		else
			c->dropped++;
	}
	// 0 drops; anything else keeps that many bytes, so the largest value keeps the whole
	// skb (its length would not do for an empty one, which reaches the switch as a runt).
	return pass ? 0xffffffff : 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
