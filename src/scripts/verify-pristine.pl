# Proves a pristine copy equals its manifest before bst patches releases from it: the same
# paths, kinds (file, executable, symlink), sizes and SHA-256 (first 128 bits), no extra files
# or directories. Run by the cache job as `perl -e <this> MANIFEST DIR`; exit 0 only on a
# match, else the first difference on stderr. Only perl-base (Essential on Debian and Ubuntu)
# and coreutils' `sha256sum -z` are used: a server without them never gets delta redeploys.
use strict;
use warnings;

my ($manifest, $dir) = @ARGV;
sub bad { print STDERR "pristine copy does not match its manifest: $_[0]\n"; exit 1 }

open(my $m, '<:raw', $manifest) or bad("cannot read the manifest: $!");
my %want;
{
    local $/ = "\0";
    my $magic = <$m>;
    defined $magic or bad('empty manifest');
    chomp $magic;
    $magic eq 'bst-manifest-2' or bad('unknown manifest format');
    while (my $r = <$m>) {
        chomp $r;
        next if $r eq '';
        my ($k, $size, $stamp, $hash, $path) = split /\t/, $r, 5;
        (defined $path && $path ne '' && $k =~ /\A[fxl-]\z/ && $size =~ /\A[0-9]+\z/ && $hash =~ /\A[0-9a-f]{32}\z/)
            or bad('a record is malformed');
        # Appended patches replay in order: a later record replaces, `-` removes.
        if ($k eq '-') { delete $want{$path} } else { $want{$path} = [$k, $size, $hash] }
    }
}
close $m;

my %dirs;
for my $p (keys %want) {
    my $d = $p;
    $dirs{$d} = 1 while $d =~ s{/[^/]*\z}{};
}

my (@files, %links, %seen);
sub walk {
    my ($rel) = @_;
    my $full = $rel eq '' ? $dir : "$dir/$rel";
    opendir(my $dh, $full) or bad("cannot read $full: $!");
    my @names = grep { $_ ne '.' && $_ ne '..' } readdir $dh;
    closedir $dh;
    for my $n (@names) {
        my $p = $rel eq '' ? $n : "$rel/$n";
        my @st = lstat("$dir/$p") or bad("cannot stat $p: $!");
        if (-l _) {
            my $w = $want{$p} or bad("extra symlink $p");
            $w->[0] eq 'l' or bad("$p is a symlink, the manifest says otherwise");
            my $t = readlink("$dir/$p");
            defined $t or bad("cannot read link $p: $!");
            $links{$p} = $t;
            $seen{$p} = 1;
        } elsif (-d _) {
            $dirs{$p} or bad("extra directory $p");
            walk($p);
        } elsif (-f _) {
            my $w = $want{$p} or bad("extra file $p");
            my $k = ($st[2] & 0111) ? 'x' : 'f';
            $w->[0] eq $k or bad("kind of $p is $k, the manifest says $w->[0]");
            $w->[1] == $st[7] or bad("size of $p is $st[7], the manifest says $w->[1]");
            push @files, $p;
            $seen{$p} = 1;
        } else {
            bad("$p is not a file, symlink or directory");
        }
    }
}
walk('');
for my $p (keys %want) { $seen{$p} or bad("missing $p") }

# One sha256sum per batch of files (xargs), NUL-separated both ways: no name is escaped.
if (@files) {
    my $list = "$dir.verify-list.$$";
    open(my $l, '>:raw', $list) or bad("cannot write $list: $!");
    print $l map { "$_\0" } @files;
    close $l or bad("cannot write $list: $!");
    open(my $h, '-|', 'sh', '-c', 'exec < "$2" && cd "$1" && xargs -0 -r sha256sum -z --', 'sh', $dir, $list) or bad("cannot run sha256sum: $!");
    my $n = 0;
    {
        local $/ = "\0";
        while (my $r = <$h>) {
            chomp $r;
            $r =~ /\A([0-9a-f]{64}) [ *](.*)\z/s or bad('unexpected sha256sum output');
            my ($sum, $p) = ($1, $2);
            my $w = $want{$p} or bad("sha256sum named $p");
            substr($sum, 0, 32) eq $w->[2] or bad("content of $p differs");
            $n++;
        }
    }
    close $h;
    unlink $list;
    $? == 0 or bad('sha256sum failed');
    $n == @files or bad('sha256sum did not hash every file');
}
for my $p (keys %links) {
    open(my $h, '-|', 'sh', '-c', 'printf %s "$1" | sha256sum', 'sh', $links{$p}) or bad("cannot run sha256sum: $!");
    my $sum = <$h>;
    close $h;
    (defined $sum && substr($sum, 0, 32) eq $want{$p}[2]) or bad("target of link $p differs");
}
exit 0;
