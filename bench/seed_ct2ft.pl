#!/usr/bin/perl
#
# seed_ct2ft.pl -- the 2009 Perl nfflowd's "ct2ft" loop, re-created for benchmarks.
#
#   perl bench/seed_ct2ft.pl [-x EXADDR] [-t TTL] [-s] [LOG ...] > records.csv
#
# Written for bench/bench_vs_seed.py, so that nfflowd can be compared with the
# technique of the tool it re-creates (Net::Netfilter::NetFlow, 2009; its manual
# is ../shared/seed/nfflowd-perl.txt).  Core modules only.
#
# What it does, as the seed's ct2ft stage did:
#   * reads `conntrack -E -e NEW,DESTROY -o timestamp -n` text lines (files or stdin);
#   * "parses" each line the seed's way: one regex substitution deletes every
#     character that is not whitespace, a digit, '.' or an upper-case letter
#     (so "[NEW]" -> NEW, "src=10.0.0.1" -> 10.0.0.1, "tcp" -> nothing), then the
#     line is split on whitespace and fields are taken by position;
#   * keeps only NEW and DESTROY of protocols 1, 6, 17, and of ICMP only echo;
#   * NEW: remembers the line's timestamp ("SEC.USEC" string) in a hash of hashes,
#     by protocol and by a key joined from six (TCP/UDP) or four (ICMP) positional
#     fields: private source (and port), public source (and port, the reply
#     tuple's destination), destination (and port) / ICMP id;
#   * DESTROY: builds the same key from the DESTROY layout; when a NEW is known,
#     prints three flow-tools CSV records (18 fields, the seed's order): private
#     source -> destination, public source -> destination (both with the original
#     counters) and destination -> public source (reply counters).  UNIX_SECS and
#     UNIX_NSECS are the time of printing (gettimeofday), SYSUPTIME/FIRST/LAST are
#     ms since this program started ($^T), EXADDR is -x (the seed's first
#     <flow_send> arg, default 127.0.0.1);
#   * purges tracked NEWs older than the TTL (-t, default one week) on SIGALRM,
#     checked between lines, as the seed did.  The NEW entry is deleted neither
#     at DESTROY nor otherwise (the seed kept it until the purge).
#
# What it does not do, compared with the seed:
#   * no `conntrack` child, no `conntrack -L` wake-up, no daemonising, no
#     configuration file: the log comes from files/stdin;
#   * no ptee stage (Log::Dispatch to screen and syslog) and no flow-import |
#     flow-send pipeline (flow-tools programs, not Perl): records go to stdout,
#     which stands for the seed's syslog copy; no NetFlow datagram is built;
#   * IPv6 lines are skipped (counted) before the substitution.  The seed
#     documented IPv4 only; on an IPv6 line its substitution deletes ':' and
#     a-f, so it would print mangled addresses instead;
#   * ICMP records carry ports 0/0.  The seed read a field past the end of its
#     ICMP layout (undef -> 0); with `-o id` and [ASSURED] in the line that
#     position holds text, which the seed would have printed;
#   * -s prints counters and this process's memory to stderr at the end.
#
# Kept as the seed had it (so the counts are the seed's, not nfflowd's):
#   * three records per connection whatever the NAT (the seed assumed source NAT);
#   * a DESTROY whose layout differs from the assumed one finds no NEW and is
#     silently dropped: e.g. an [UNREPLIED] UDP flow's DESTROY carries the word
#     UNREPLIED in the middle, which shifts every later position.
#
use strict;
use warnings;
use POSIX ();
use Time::HiRes qw(gettimeofday);

my $exaddr = '127.0.0.1';
my $ttl    = 60 * 60 * 24 * 7;
my $stats  = 0;
while (@ARGV and $ARGV[0] =~ /^-/) {
    my $opt = shift @ARGV;
    if    ($opt eq '-x') { $exaddr = shift @ARGV }
    elsif ($opt eq '-t') { $ttl    = shift @ARGV }
    elsif ($opt eq '-s') { $stats  = 1 }
    elsif ($opt eq '--') { last }
    else { die "usage: $0 [-x EXADDR] [-t TTL] [-s] [LOG ...]\n" }
}

# Field positions after the substitution and split (0 is the timestamp, 1 the event):
#   NEW tcp      ts NEW 6 timeout STATE src dst sport dport UNREPLIED rsrc rdst rsport rdport
#   NEW udp      ts NEW 17 timeout src dst sport dport UNREPLIED rsrc rdst rsport rdport
#   NEW icmp     ts NEW 1 timeout src dst type code id UNREPLIED rsrc rdst type code id
#   DESTROY t/u  ts DESTROY p src dst sport dport pkts bytes rsrc rdst rsport rdport pkts bytes
#   DESTROY icmp ts DESTROY 1 src dst type code id pkts bytes rsrc rdst type code id pkts bytes
# Key: private src, its port, public src (reply dst), its port, destination, its port;
# ICMP: private src, public src, destination, echo id.
my %new_key = (
    6  => [ 5, 7, 11, 13, 6, 8 ],
    17 => [ 4, 6, 10, 12, 5, 7 ],
    1  => [ 4, 11, 5, 8 ],
);
my %destroy_key = (
    6  => [ 3, 5, 10, 12, 4, 6 ],
    17 => [ 3, 5, 10, 12, 4, 6 ],
    1  => [ 3, 11, 4, 7 ],
);
# Per record: packets, bytes, src, dst, sport, dport (undef: no port field).
my @tcp_udp = ([ 7, 8, 3, 4, 5, 6 ], [ 7, 8, 10, 9, 12, 11 ], [ 13, 14, 9, 10, 11, 12 ]);
my %records = (
    6  => \@tcp_udp,
    17 => \@tcp_udp,
    1  => [ [ 8, 9, 3, 4, undef, undef ], [ 8, 9, 11, 10, undef, undef ],
            [ 15, 16, 10, 11, undef, undef ] ],
);

my %count = map { $_ => 0 } qw(lines new destroy matched records skipped_ipv6 skipped_other);
my %tracker;    # proto => { key => "SEC.USEC" of the NEW }
my $alarmed = 0;
POSIX::sigaction(POSIX::SIGALRM(), POSIX::SigAction->new(sub { $alarmed = 1 }));
alarm $ttl;

while (my $line = <>) {
    $count{lines}++;
    if ($alarmed) {    # purge NEWs older than the TTL (clock of this process, as the seed)
        my $limit = $^T - $ttl;
        for my $by_key (values %tracker) {
            for my $k (keys %$by_key) {
                delete $by_key->{$k} if $by_key->{$k} < $limit;
            }
        }
        $alarmed = 0;
        alarm $ttl;
    }
    if (index($line, ':') >= 0) { $count{skipped_ipv6}++; next }
    chomp $line;
    $line =~ s/[^\s\d.A-Z]//g;
    my @f = split ' ', $line;
    if (@f < 13 or ($f[1] ne 'NEW' and $f[1] ne 'DESTROY')) { $count{skipped_other}++; next }
    my $proto = $f[2];
    if (not exists $new_key{$proto}) { $count{skipped_other}++; next }
    # ICMP: echo only; the type is field 6 in a NEW, field 5 in a DESTROY
    if ($proto == 1 and $f[5] ne '8' and $f[6] ne '8') { $count{skipped_other}++; next }

    if ($f[1] eq 'NEW') {
        $count{new}++;
        $tracker{$proto}{ join ',', @f[ @{ $new_key{$proto} } ] } = $f[0];
        next;
    }
    $count{destroy}++;
    my $start = $tracker{$proto}{ join ',', @f[ @{ $destroy_key{$proto} } ] };
    next unless defined $start;
    $count{matched}++;

    my ($start_s, $start_us) = split /\./, $start;
    my ($end_s,   $end_us)   = split /\./, $f[0];
    my ($now_s,   $now_us)   = gettimeofday;
    my $uptime = ($now_s - $^T) * 1000 + int($now_us / 1000);
    my $first  = ($start_s - $^T) * 1000 + int($start_us / 1000);
    my $last   = ($end_s - $^T) * 1000 + int($end_us / 1000);
    for my $r (@{ $records{$proto} }) {
        my ($pkts, $bytes, $src, $dst, $sport, $dport) = @$r;
        print join(',',
            $now_s, $now_us * 1000, $uptime, $exaddr, $f[$pkts], $f[$bytes], $first, $last,
            $f[$src], $f[$dst], '0.0.0.0', 0, 0,
            defined $sport ? $f[$sport] : 0, defined $dport ? $f[$dport] : 0,
            $proto, 0, 0), "\n";
        $count{records}++;
    }
}

if ($stats) {
    my $open = 0;
    $open += scalar keys %$_ for values %tracker;
    my %mem;
    if (open my $st, '<', '/proc/self/status') {
        while (<$st>) { $mem{$1} = $2 if /^(VmRSS|VmHWM):\s+(\d+)/ }
        close $st;
    }
    print STDERR join(' ', map { "$_=$count{$_}" } sort keys %count),
        " tracked=$open rss_kb=", $mem{VmRSS} // 0, " hwm_kb=", $mem{VmHWM} // 0, "\n";
}
