/*
 * corral-init: the launcher and the PID 1 of a Corral container.
 *
 * README.md in this folder is the contract with the daemon: the launch spec
 * read by `corral-init launch` and the protocol PID 1 serves on its socket.
 *
 * Build: gcc -Os -static -Wall -Wextra -o corral-init corral_init.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/loop.h>
#include <linux/magic.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <linux/netlink.h>
#include <malloc.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdnoreturn.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

/* linux/openat2.h: glibc has neither the wrapper nor the struct. */
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#define CORRAL_RESOLVE_NO_MAGICLINKS 0x02
#define CORRAL_RESOLVE_IN_ROOT 0x10
struct corral_open_how {
	uint64_t flags, mode, resolve;
};

/* linux/mount.h (5.12): the new mount API, called through syscall(). */
#ifndef SYS_open_tree
#define SYS_open_tree 428
#define SYS_move_mount 429
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#define CORRAL_OPEN_TREE_CLONE 1
#define CORRAL_MOVE_MOUNT_F_EMPTY_PATH 0x04
#define CORRAL_MOVE_MOUNT_T_EMPTY_PATH 0x40
#define CORRAL_MOUNT_ATTR_RDONLY 0x01
#define CORRAL_MOUNT_ATTR_NOSUID 0x02
#define CORRAL_MOUNT_ATTR_NODEV 0x04
#define CORRAL_MOUNT_ATTR_NOEXEC 0x08
#define CORRAL_MOUNT_ATTR_IDMAP 0x00100000
struct corral_mount_attr {
	uint64_t attr_set, attr_clr, propagation, userns_fd;
};

#define DEFAULT_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define MAX_FDS 8                  /* fds accepted with one message */
#define MAX_FILE (4 * 1024 * 1024) /* largest /etc/passwd */
#define SEND_TIMEOUT_SEC 2         /* a client that does not read is dropped */
#define CONTROL_FD 3               /* the daemon's control socket, if it passed one */
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

extern char **environ;

/* Where die() reports, and the exit status that follows: the launcher writes
 * to stderr and exits 1, PID 1 during set-up writes to the ready pipe, a job's
 * child writes to its exec-report pipe and exits 127. */
static int err_fd = STDERR_FILENO;
static int err_status = 1;
/* Put before the message of a failure in the container's root (its content is the
 * client's rootfs, its mount targets the client's bind mounts): the daemon answers
 * those invalid_request, not internal. launcher.py knows this text. */
#define IN_ROOT "in the container root: "
static const char *err_blame = "";

/* The user namespace's first process, until its ids are mapped (see "the container's
 * user namespace"), reaped whatever happens: once the launcher is gone it would be the
 * daemon's zombie. */
static pid_t keeper = -1;
static int keeper_hold = -1; /* closing it lets the keeper exit */

static void reap_keeper(void)
{
	if (keeper > 0) {
		close(keeper_hold);
		waitpid(keeper, NULL, 0);
		keeper = keeper_hold = -1;
	}
}

__attribute__((format(printf, 2, 3))) static noreturn void fail(int errnum, const char *fmt, ...)
{
	char msg[1024];
	size_t n = 0;
	va_list ap;

	if (err_fd == STDERR_FILENO)
		n = (size_t)snprintf(msg, sizeof msg, "corral-init: ");
	n += (size_t)snprintf(msg + n, sizeof msg - n, "%s", err_blame);
	va_start(ap, fmt); /* leave room for the error text */
	vsnprintf(msg + n, sizeof msg - 128 - n, fmt, ap);
	va_end(ap);
	n = strlen(msg);
	if (errnum)
		n += (size_t)snprintf(msg + n, sizeof msg - n, ": %s", strerror(errnum));
	n = n < sizeof msg - 1 ? n : sizeof msg - 2;
	if (err_fd == STDERR_FILENO)
		msg[n++] = '\n';
	if (write(err_fd, msg, n) < 0) {
		/* nowhere left to report */
	}
	reap_keeper();
	_exit(err_status);
}

#define die(...) fail(errno, __VA_ARGS__)
#define die_msg(...) fail(0, __VA_ARGS__)
/* Run CALL (a syscall returning < 0 on failure); on failure die with the message. */
#define TRY(call, ...)               \
	do {                         \
		if ((call) < 0)      \
			die(__VA_ARGS__); \
	} while (0)

static void *xrealloc(void *p, size_t size)
{
	if (!(p = realloc(p, size ? size : 1)))
		die("realloc");
	return p;
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size);
	if (!p)
		die("calloc");
	return p;
}

static char *xstrdup(const char *s)
{
	char *p = strdup(s);
	if (!p)
		die("strdup");
	return p;
}

static char *concat(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	char *p = xrealloc(NULL, la + lb + 1);
	memcpy(p, a, la);
	memcpy(p + la, b, lb + 1);
	return p;
}

/* Parse a whole decimal number no larger than MAX. */
static bool parse_uint(const char *s, unsigned long long max, unsigned long long *out)
{
	char *end;

	if (*s < '0' || *s > '9')
		return false;
	errno = 0;
	*out = strtoull(s, &end, 10);
	return !errno && !*end && *out <= max;
}

static bool parse_mode(const char *s, mode_t *mode)
{
	char *end;
	unsigned long v = strtoul(s, &end, 8);

	*mode = (mode_t)v;
	return *s >= '0' && *s <= '7' && !*end && v <= 07777;
}

/* Read FD to EOF into a NUL-terminated buffer of at most MAX_FILE bytes. */
static char *read_all(int fd, const char *what)
{
	size_t len = 0, cap = 4096;
	char *buf = xrealloc(NULL, cap);
	ssize_t n;

	while ((n = read(fd, buf + len, cap - len - 1)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		TRY(n, "read %s", what);
		if ((len += (size_t)n) + 1 < cap)
			continue;
		if (cap >= MAX_FILE)
			die_msg("read %s: larger than %d bytes", what, MAX_FILE);
		buf = xrealloc(buf, cap *= 2);
	}
	buf[len] = '\0';
	return buf;
}

/* Read a short report from a pipe until EOF into BUF (NUL-terminated); its length. */
static size_t read_report(int fd, char *buf, size_t cap, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	size_t len = 0;
	ssize_t n = 0;

	/* TIMEOUT_MS (-1: none) bounds each wait: a report comes in one write, if at all */
	while (len < cap - 1 && (timeout_ms < 0 || poll(&p, 1, timeout_ms) > 0) &&
	       (n = read(fd, buf + len, cap - 1 - len)) != 0) {
		if (n < 0 && errno != EINTR)
			break;
		len += n > 0 ? (size_t)n : 0;
	}
	buf[len] = '\0';
	return len;
}

/* ---- launch spec ------------------------------------------------------ */

/* The seccomp filters, from the spec's `seccomp CONTAINER PRIVILEGED UNPRIVILEGED` line
 * ("-": none): PID 1 loads CONTAINER once set up, so every job inherits it; each job
 * adds its own kind's, [0] for unprivileged jobs, [1] for privileged ones. Kept by
 * PID 1 for its whole life, so a container keeps its filters whatever daemon runs later. */
static struct sock_fprog container_filter, job_filters[2];
static bool seccomp_seen;
/* The spec's `admin`: the jobs get a mount namespace of the container's user namespace,
 * and the privileged ones CAP_SYS_ADMIN there (to mount FUSE filesystems). */
static bool admin;
static int admin_ns = -1; /* that namespace (PID 1 stays in the set-up's) */
/* How long PID 1 waits for an admin container's job to exec: its path may lead through
 * a FUSE mount whose server (the container's own process) never answers. */
#define ADMIN_EXEC_WAIT_MS 5000

static int hex_digit(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* A BPF program in lowercase hex (struct sock_filter in the machine's byte order), or
 * "-" for none. */
static bool parse_filter(const char *hex, struct sock_fprog *prog)
{
	size_t len = strlen(hex), size = len / 2, insn = sizeof(struct sock_filter);
	unsigned char *bytes;

	if (!strcmp(hex, "-")) {
		*prog = (struct sock_fprog){ 0 };
		return true;
	}
	if (!len || len % (2 * insn) || size / insn > BPF_MAXINSNS)
		return false;
	bytes = xrealloc(NULL, size);
	for (size_t i = 0; i < size; i++) {
		int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
		if (hi < 0 || lo < 0) {
			free(bytes);
			return false;
		}
		bytes[i] = (unsigned char)(hi << 4 | lo);
	}
	*prog = (struct sock_fprog){ .len = (unsigned short)(size / insn), .filter = (struct sock_filter *)bytes };
	return true;
}

enum kind {
	D_CGROUP, D_ROOT, D_MOUNT, D_MKNOD, D_SYMLINK, D_MKDIR, D_HOSTNAME, D_LOOPBACK, D_SOCKET, D_LABEL,
	D_SECCOMP, D_USERNS, D_ADMIN, D_END
};

static const struct {
	const char *name;
	int nfields;
} kinds[] = {
	[D_CGROUP] = { "cgroup", 1 },     [D_ROOT] = { "root", 1 },         [D_MOUNT] = { "mount", 5 },
	[D_MKNOD] = { "mknod", 5 },       [D_SYMLINK] = { "symlink", 2 },   [D_MKDIR] = { "mkdir", 2 },
	[D_HOSTNAME] = { "hostname", 1 }, [D_LOOPBACK] = { "loopback", 0 }, [D_SOCKET] = { "socket", 1 },
	[D_LABEL] = { "label", 1 },       [D_SECCOMP] = { "seccomp", 3 }, [D_USERNS] = { "userns", 2 },
	[D_ADMIN] = { "admin", 0 },       [D_END] = { "end", 0 },
};

enum { OPT_MKDIR = 1, OPT_MKFILE = 2, OPT_OPTIONAL = 4, OPT_LOOP = 8, OPT_HOST = 16, OPT_IDMAP = 32 };

struct directive {
	enum kind kind;
	bool done;  /* applied by the launcher */
	char *line; /* holds the fields */
	char *f[5];
	unsigned long mflags; /* mount: MS_* */
	unsigned opts;        /* mount: OPT_* */
	mode_t mode;          /* mknod, mkdir */
	dev_t dev;            /* mknod */
	unsigned long long first, count; /* userns */
};

struct spec {
	struct directive *d;
	size_t n, cap;
	const char *root, *socket;
	bool late; /* from the proc mount on, directives wait for PID 1 */
};

static void parse_mount_flags(struct directive *d, int line)
{
	static const struct {
		const char *name;
		unsigned long ms;
		unsigned opt;
	} words[] = {
		{ "bind", MS_BIND, 0 },     { "rec", MS_REC, 0 },        { "ro", MS_RDONLY, 0 },
		{ "nosuid", MS_NOSUID, 0 }, { "nodev", MS_NODEV, 0 },    { "noexec", MS_NOEXEC, 0 },
		{ "mkdir", 0, OPT_MKDIR },  { "mkfile", 0, OPT_MKFILE }, { "optional", 0, OPT_OPTIONAL },
		{ "loop", 0, OPT_LOOP },    { "host", 0, OPT_HOST },     { "idmap", 0, OPT_IDMAP },
	};
	char *save, *w;
	size_t i;

	if (!strcmp(d->f[3], "-"))
		return;
	for (w = strtok_r(d->f[3], ",", &save); w; w = strtok_r(NULL, ",", &save)) {
		for (i = 0; i < ARRAY_LEN(words) && strcmp(w, words[i].name); i++)
			;
		if (i == ARRAY_LEN(words))
			die_msg("launch spec line %d: unknown mount flag %s", line, w);
		d->mflags |= words[i].ms;
		d->opts |= words[i].opt;
	}
	/* A host target is the daemon's own path: never created, never optional, never the root. */
	if ((d->opts & OPT_HOST) && (d->opts & (OPT_MKDIR | OPT_MKFILE | OPT_OPTIONAL)))
		die_msg("launch spec line %d: host cannot be combined with mkdir, mkfile or optional", line);
	if ((d->opts & OPT_LOOP) && (d->mflags & MS_BIND))
		die_msg("launch spec line %d: loop cannot be combined with bind", line);
	if ((d->opts & OPT_IDMAP) && ((d->opts & OPT_HOST) || (!(d->mflags & MS_BIND) && strcmp(d->f[0], "overlay"))))
		die_msg("launch spec line %d: idmap is for a bind or the root overlay, not a host mount", line);
}

static void parse_directive(struct spec *sp, struct directive *d, char *line, int lineno)
{
	char *fields[7];
	int n = 0, k;
	unsigned long long major, minor;

	for (char *p = line; p && n < 7; n++) {
		fields[n] = p;
		if ((p = strchr(p, '\t')))
			*p++ = '\0';
	}
	for (k = 0; k <= D_END && strcmp(fields[0], kinds[k].name); k++)
		;
	if (k > D_END)
		die_msg("launch spec line %d: unknown directive %s", lineno, fields[0]);
	if (n - 1 != kinds[k].nfields)
		die_msg("launch spec line %d: %s takes %d fields", lineno, fields[0], kinds[k].nfields);
	*d = (struct directive){ .kind = (enum kind)k, .line = line };
	memcpy(d->f, fields + 1, sizeof(char *) * (size_t)(n - 1));
	if (d->kind == D_ROOT || d->kind == D_SOCKET) {
		const char **slot = d->kind == D_ROOT ? &sp->root : &sp->socket;
		if (*slot)
			die_msg("launch spec line %d: a second %s", lineno, fields[0]);
		*slot = d->f[0];
		if (d->kind == D_SOCKET && strlen(d->f[0]) >= sizeof(((struct sockaddr_un *)0)->sun_path))
			die_msg("launch spec line %d: socket path longer than 107 bytes", lineno);
	} else if (d->kind == D_MOUNT) {
		parse_mount_flags(d, lineno);
	} else if (d->kind == D_MKNOD) {
		if (strcmp(d->f[1], "c") || !parse_uint(d->f[2], 0xfff, &major) ||
		    !parse_uint(d->f[3], 0xfffff, &minor) || !parse_mode(d->f[4], &d->mode))
			die_msg("launch spec line %d: bad mknod fields", lineno);
		d->dev = makedev(major, minor);
	} else if (d->kind == D_USERNS) {
		if (!parse_uint(d->f[0], UINT32_MAX - 1, &d->first) || !parse_uint(d->f[1], UINT32_MAX, &d->count) ||
		    !d->count || d->first + d->count > UINT32_MAX)
			die_msg("launch spec line %d: bad userns fields", lineno);
	} else if (d->kind == D_MKDIR && !parse_mode(d->f[1], &d->mode)) {
		die_msg("launch spec line %d: bad mode %s", lineno, d->f[1]);
	} else if (d->kind == D_ADMIN) {
		admin = true;
	} else if (d->kind == D_SECCOMP) { /* decoded now: PID 1 frees the spec's lines */
		if (seccomp_seen)
			die_msg("launch spec line %d: a second seccomp", lineno);
		seccomp_seen = true;
		if (!parse_filter(d->f[0], &container_filter) || !parse_filter(d->f[1], &job_filters[1]) ||
		    !parse_filter(d->f[2], &job_filters[0]))
			die_msg("launch spec line %d: bad seccomp filter", lineno);
	}
}

/* ---- the container's user namespace ------------------------------------ */

/*
 * Every container has a user namespace: its ids are a block of host ids of its own
 * (the spec's `userns FIRST COUNT`), or the host's ids mapped onto themselves. A keeper
 * process makes it ahead, with the container's network, uts and ipc namespaces in the
 * same unshare, so they belong to it: the container's root has its capabilities over
 * them and over nothing of the host's. The launcher, root on the host, joins those
 * (it keeps its power to mount) and PID 1 joins the user namespace once set up. The pid
 * namespace is the launcher's own (one cannot be joined before it has a first process),
 * made right before PID 1 is forked: a child of the launcher before it (the keeper)
 * would be its first process otherwise.
 */
static int userns_fd = -1;     /* -1: the kernel gave no user namespace */
static int userns_errno;       /* why not */
static bool own_ids;           /* a block of its own: the root and binds are id-mapped */
static uid_t container_root;   /* the host id of the container's root (own_ids) */

/* Fork the keeper: it unshares FLAGS (CLONE_NEWUSER and those to belong to it) and
 * waits. False, with userns_errno set, if the kernel refuses a user namespace. */
static bool start_keeper(int flags)
{
	int ready[2], hold[2];
	char c;

	TRY(pipe2(ready, O_CLOEXEC), "pipe2");
	TRY(pipe2(hold, O_CLOEXEC), "pipe2");
	TRY(keeper = fork(), "fork");
	if (keeper == 0) {
		close(ready[0]);
		close(hold[1]);
		c = unshare(flags) < 0 ? (char)errno : 0;
		close(CONTROL_FD); /* the daemon's: its end must be the launcher's and PID 1's */
		if (write(ready[1], &c, 1) == 1 && !c && read(hold[0], &c, 1) < 0)
			_exit(1);
		_exit(0);
	}
	close(ready[1]);
	close(hold[0]);
	keeper_hold = hold[1];
	if (read(ready[0], &c, 1) != 1)
		c = EIO;
	close(ready[0]);
	if (!c)
		return true;
	reap_keeper();
	userns_errno = c;
	/* EPERM, EINVAL, ENOSPC, EUSERS: none here (disabled, or none left) */
	return false;
}

/* The launcher's namespaces, made before its spec comes. */
static void make_namespaces(void)
{
	static const struct {
		const char *name;
		int type;
	} joined[] = { { "net", CLONE_NEWNET }, { "uts", CLONE_NEWUTS }, { "ipc", CLONE_NEWIPC } };
	const int others = CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET;
	char path[64];
	int fd;

	if (!start_keeper(CLONE_NEWUSER | others)) {
		TRY(unshare(others), "unshare");
		return;
	}
	for (size_t i = 0; i < ARRAY_LEN(joined); i++) {
		snprintf(path, sizeof path, "/proc/%d/ns/%s", (int)keeper, joined[i].name);
		TRY(fd = open(path, O_RDONLY | O_CLOEXEC), "open %s", path);
		TRY(setns(fd, joined[i].type), "setns %s", path);
		close(fd);
	}
	snprintf(path, sizeof path, "/proc/%d/ns/user", (int)keeper);
	TRY(fd = open(path, O_RDONLY | O_CLOEXEC), "open %s", path);
	/* Above fd 3, which is the control socket or nothing (and then closed). */
	TRY(userns_fd = fcntl(fd, F_DUPFD_CLOEXEC, CONTROL_FD + 1), "fcntl");
	close(fd);
}

/* Map the container's ids 0..COUNT-1 onto host ids FIRST..; the keeper then goes. */
static void map_ids(unsigned long long first, unsigned long long count)
{
	static const char *const maps[] = { "uid_map", "gid_map" };
	bool host = first == 0 && count == UINT32_MAX;
	char path[64], map[64];
	int fd, n;

	if (userns_fd < 0) {
		if (host)
			return; /* the host's ids, without a namespace */
		errno = userns_errno;
		die("a user namespace for the container's ids");
	}
	if (keeper < 0)
		die_msg("launch spec: a second userns, or one after root");
	n = snprintf(map, sizeof map, "0 %llu %llu\n", first, count);
	for (size_t i = 0; i < ARRAY_LEN(maps); i++) {
		snprintf(path, sizeof path, "/proc/%d/%s", (int)keeper, maps[i]);
		TRY(fd = open(path, O_WRONLY | O_CLOEXEC), "open %s", path);
		TRY(write(fd, map, (size_t)n), "write %s", path);
		close(fd);
	}
	reap_keeper();
	own_ids = !host;
	container_root = (uid_t)first;
}

/* The capabilities in effect again (setfsuid away from 0 takes the filesystem ones). */
static void raise_effective(void)
{
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct data[2];

	TRY(syscall(SYS_capget, &hdr, data), "capget");
	for (int i = 0; i < 2; i++)
		data[i].effective = data[i].permitted;
	TRY(syscall(SYS_capset, &hdr, data), "capset");
}

/* What the set-up creates in an id-mapped root is the container root's: through the
 * mapping only ids of its block can be written, so the files are made with its ids
 * (ON), and with the host's root's again after (!ON). */
static void as_container_root(bool on)
{
	if (!own_ids)
		return;
	setfsgid(on ? container_root : 0);
	setfsuid(on ? container_root : 0);
	if (on)
		raise_effective();
}

/* A detached copy of the mount tree at SRC (and its submounts if REC) with the
 * container's ids mapped onto its files, and ATTRS (MOUNT_ATTR_*) set; -1 (errno
 * EINVAL) if its filesystem, or a submount's, cannot be id-mapped. */
static int idmapped_tree(const char *src, bool rec, uint64_t attrs)
{
	struct corral_mount_attr a = { .attr_set = CORRAL_MOUNT_ATTR_IDMAP | attrs, .userns_fd = (uint64_t)userns_fd };
	unsigned recursive = rec ? AT_RECURSIVE : 0;
	int fd;

	TRY(fd = (int)syscall(SYS_open_tree, AT_FDCWD, src, CORRAL_OPEN_TREE_CLONE | O_CLOEXEC | recursive),
	    "open_tree %s", src);
	if (syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH | recursive, &a, sizeof a) < 0) {
		if (errno != EINVAL)
			die("map the container's ids onto %s", src);
		close(fd);
		return -1;
	}
	return fd;
}

/* `corral-init probe-ids FIRST PATH...`: exit 0 if a container with host ids from FIRST
 * can be made here, with its ids mapped onto each PATH; else 1 and the reason. */
static int probe_ids(int argc, char **argv)
{
	unsigned long long first;

	if (argc < 3 || !parse_uint(argv[2], UINT32_MAX - 65536, &first))
		die_msg("usage: corral-init probe-ids FIRST PATH...");
	if (!start_keeper(CLONE_NEWUSER)) {
		errno = userns_errno;
		die("unshare CLONE_NEWUSER");
	}
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/ns/user", (int)keeper);
	TRY(userns_fd = open(path, O_RDONLY | O_CLOEXEC), "open %s", path);
	map_ids(first, 65536);
	for (int i = 3; i < argc; i++) {
		int tree = idmapped_tree(argv[i], false, 0);
		if (tree < 0)
			die("%s: no id-mapped mounts on its filesystem", argv[i]);
		close(tree);
	}
	return 0;
}

/* ---- paths inside the container root ---------------------------------- */

/* openat2() PATH below ROOTFD as if ROOTFD were "/": symlinks and ".." stay inside. */
static int open_in_root(int rootfd, const char *path, uint64_t flags)
{
	struct corral_open_how how = {
		.flags = flags | O_CLOEXEC,
		.resolve = CORRAL_RESOLVE_IN_ROOT | CORRAL_RESOLVE_NO_MAGICLINKS,
	};

	for (int i = 0; i < 32; i++) {
		long fd = syscall(SYS_openat2, rootfd, path, &how, sizeof how);
		if (fd >= 0 || errno != EAGAIN) /* EAGAIN: a concurrent rename or mount */
			return (int)fd;
	}
	return -1;
}

static int must_open_in_root(int rootfd, const char *path, uint64_t flags)
{
	int fd;

	TRY(fd = open_in_root(rootfd, path, flags), "openat2 %s", path);
	return fd;
}

static void fd_path(int fd, char buf[static 32])
{
	snprintf(buf, 32, "/proc/self/fd/%d", fd);
}

/*
 * Walk PATH (a writable copy) inside the root and return an O_PATH fd of the
 * directory holding its last component, whose name is left in *name (NULL if
 * PATH is the root itself). Missing directories are made one by one, each in
 * a parent that was itself resolved inside the root.
 */
static int walk_parent(int rootfd, char *path, char **name)
{
	int parent = must_open_in_root(rootfd, "/", O_PATH | O_DIRECTORY);
	char *p = path + strspn(path, "/");

	*name = NULL;
	while (*p) {
		char *end = p + strcspn(p, "/"), *rest = end + strspn(end, "/"), save = *end;
		*end = '\0';
		if (!*rest) {
			*name = p;
			break;
		}
		int fd = open_in_root(rootfd, path, O_PATH);
		if (fd < 0 && errno == ENOENT) {
			if (mkdirat(parent, p, 0755) < 0 && errno != EEXIST)
				die("mkdir %s", path);
			fd = open_in_root(rootfd, path, O_PATH);
		}
		TRY(fd, "openat2 %s", path);
		close(parent);
		parent = fd;
		*end = save;
		p = rest;
	}
	return parent;
}

/* Create PATH inside the root (and its missing parents) as a directory, a
 * symlink to LINK, or a node of MODE; an existing one is kept as it is. */
static void create_in_root(int rootfd, const char *path, mode_t mode, dev_t dev, const char *link)
{
	const char *call = S_ISDIR(mode) ? "mkdir" : link ? "symlink" : "mknod";
	char *copy = xstrdup(path), *name;
	int parent, rc = 0;

	as_container_root(true);
	parent = walk_parent(rootfd, copy, &name);
	if (!name && !S_ISDIR(mode))
		die_msg("%s %s: not a file name", call, path);
	if (name && S_ISDIR(mode))
		rc = mkdirat(parent, name, mode & 07777);
	else if (name && link)
		rc = symlinkat(link, parent, name);
	else if (name)
		rc = mknodat(parent, name, mode, dev);
	if (rc < 0 && errno != EEXIST)
		die("%s %s", call, path);
	close(parent);
	free(copy);
	as_container_root(false);
}

static bool same_file(int a, int b)
{
	struct stat sa, sb;

	if (fstat(a, &sa) < 0 || fstat(b, &sb) < 0)
		die("fstat");
	return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* ---- PID 1 set-up ----------------------------------------------------- */

struct root {
	const char *path; /* host path of the root dir */
	int fd;           /* O_PATH fd of the topmost mount on it */
	bool mounted;     /* whether something was mounted on it */
};

static void reopen_root(struct root *r)
{
	if (r->fd >= 0)
		close(r->fd);
	TRY(r->fd = open(r->path, O_PATH | O_DIRECTORY | O_CLOEXEC), "open root %s", r->path);
}

/* Resolve a mount's TARGET, creating it as asked; -1 if optional and missing. */
static int mount_target(int rootfd, const struct directive *d)
{
	const char *target = d->f[2];
	int fd;

	if (d->opts & (OPT_MKDIR | OPT_MKFILE))
		create_in_root(rootfd, target, d->opts & OPT_MKDIR ? S_IFDIR | 0755 : S_IFREG | 0644, 0,
			       NULL);
	if ((fd = open_in_root(rootfd, target, O_PATH)) < 0 &&
	    !(errno == ENOENT && (d->opts & OPT_OPTIONAL)))
		die("openat2 %s", target);
	return fd;
}

/* Remount a fresh bind mount with its flags, keeping those its source had. */
static void remount_bind(struct root *r, const struct directive *d, bool is_root)
{
	int fd = r->fd;
	unsigned long flags = MS_REMOUNT | MS_BIND | (d->mflags & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC));
	static const unsigned long keep[][2] = {
		{ ST_NOSUID, MS_NOSUID },   { ST_NODEV, MS_NODEV },           { ST_NOEXEC, MS_NOEXEC },
		{ ST_NOATIME, MS_NOATIME }, { ST_NODIRATIME, MS_NODIRATIME }, { ST_RELATIME, MS_RELATIME },
	};
	struct statvfs st;
	char path[32];

	if (d->opts & OPT_HOST)
		TRY(fd = open(d->f[2], O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), "open %s", d->f[2]);
	else if (!is_root)
		fd = must_open_in_root(r->fd, d->f[2], O_PATH);
	TRY(fstatvfs(fd, &st), "statvfs %s", d->f[2]);
	for (size_t i = 0; i < ARRAY_LEN(keep); i++)
		flags |= st.f_flag & keep[i][0] ? keep[i][1] : 0;
	fd_path(fd, path);
	TRY(mount(NULL, path, NULL, flags, NULL), "remount %s", d->f[2]);
	if (!is_root)
		close(fd);
}

/*
 * Attach the host file FILE to a free loop device that detaches itself when
 * its last user goes (LO_FLAGS_AUTOCLEAR: here, when the mount made on it
 * vanishes with the container's mount namespace). Returns an open fd of the
 * device, whose path is left in DEV; closing it once mounted is safe.
 */
static int attach_loop(const char *file, bool ro, char dev[static 32])
{
	struct loop_config cfg = { .info.lo_flags = LO_FLAGS_AUTOCLEAR | (ro ? LO_FLAGS_READ_ONLY : 0) };
	int ctl, backing, loopfd, n;

	TRY(ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC), "open /dev/loop-control");
	TRY(backing = open(file, (ro ? O_RDONLY : O_RDWR) | O_CLOEXEC), "open %s", file);
	cfg.fd = (uint32_t)backing;
	snprintf((char *)cfg.info.lo_file_name, LO_NAME_SIZE, "%s", file);
	for (int tries = 0;; tries++) {
		TRY(n = ioctl(ctl, LOOP_CTL_GET_FREE), "ioctl LOOP_CTL_GET_FREE");
		snprintf(dev, 32, "/dev/loop%d", n);
		TRY(loopfd = open(dev, O_RDWR | O_CLOEXEC), "open %s", dev);
		if (ioctl(loopfd, LOOP_CONFIGURE, &cfg) == 0)
			break;
		if (errno != EBUSY || tries == 16) /* EBUSY: another process took it first */
			die("ioctl LOOP_CONFIGURE %s on %s", file, dev);
		close(loopfd);
	}
	close(backing);
	close(ctl);
	return loopfd;
}

/* MS_* flags of a mount as MOUNT_ATTR_* */
static uint64_t mount_attrs(unsigned long mflags)
{
	return (mflags & MS_RDONLY ? CORRAL_MOUNT_ATTR_RDONLY : 0) | (mflags & MS_NOSUID ? CORRAL_MOUNT_ATTR_NOSUID : 0) |
	       (mflags & MS_NODEV ? CORRAL_MOUNT_ATTR_NODEV : 0) | (mflags & MS_NOEXEC ? CORRAL_MOUNT_ATTR_NOEXEC : 0);
}

/* Put an id-mapped view of SRC on NAME, a new directory in DIRFD. */
static void add_view(const char *src, int dirfd, const char *name)
{
	int tree = idmapped_tree(src, false, 0);

	if (tree < 0) {
		err_blame = IN_ROOT; /* the client's rootfs */
		die("map the container's ids onto %s (its filesystem has no id-mapped mounts; "
		    "\"userns\": false gives the host's ids)", src);
	}

	TRY(mkdirat(dirfd, name, 0711), "mkdir %s", name);
	TRY(syscall(SYS_move_mount, tree, "", dirfd, name, CORRAL_MOVE_MOUNT_F_EMPTY_PATH), "move_mount %s", src);
	close(tree);
}

/*
 * The root overlay of a container with ids of its own. Overlayfs cannot be id-mapped
 * itself, but its layers can, and it writes its upper layer with its mounter's
 * filesystem ids: so it is mounted over id-mapped views of its layers, with the
 * container root's filesystem ids (files then keep the ids they have on disk, as seen
 * in the container). The views sit on a scratch tmpfs on the root dir, which the
 * overlay then covers; it goes with the host's mounts at the pivot. Layer paths are the
 * daemon's (fs plugin): no ',' or ':' in them; upper and work dirs are siblings.
 */
static void mount_overlay_as_container_root(struct root *r, const struct directive *d)
{
	char *opts = xstrdup(d->f[4]), *save, *o, *layers_save, *layer, name[16];
	size_t views = 2; /* the upper dir's, and one per lower dir: a ':' apart */
	for (const char *c = d->f[4]; *c; c++)
		views += *c == ':';
	size_t cap = strlen(d->f[4]) + views * (strlen(r->path) + 16);
	char *data = xcalloc(cap, 1), *upper = NULL, *work = NULL;
	int scratch, nlayers = 0;

	TRY(mount("tmpfs", r->path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0711,size=16k"),
	    "mount tmpfs on %s", r->path);
	TRY(scratch = open(r->path, O_PATH | O_DIRECTORY | O_CLOEXEC), "open %s", r->path);
	for (o = strtok_r(opts, ",", &save); o; o = strtok_r(NULL, ",", &save)) {
		size_t used = strlen(data);
		if (!strncmp(o, "lowerdir=", 9)) {
			used += (size_t)snprintf(data + used, cap - used, "lowerdir=");
			for (layer = strtok_r(o + 9, ":", &layers_save); layer; layer = strtok_r(NULL, ":", &layers_save)) {
				snprintf(name, sizeof name, "%d", nlayers);
				add_view(layer, scratch, name);
				used += (size_t)snprintf(data + used, cap - used, "%s%s/%s", nlayers++ ? ":" : "", r->path, name);
			}
			snprintf(data + used, cap - used, ",");
		} else if (!strncmp(o, "upperdir=", 9)) {
			upper = o + 9;
		} else if (!strncmp(o, "workdir=", 8)) {
			work = o + 8;
		} else {
			snprintf(data + used, cap - used, "%s,", o);
		}
	}
	char *upper_name = upper ? strrchr(upper, '/') : NULL, *work_name = work ? strrchr(work, '/') : NULL;
	if (!upper_name || !work_name || upper_name - upper != work_name - work ||
	    strncmp(upper, work, (size_t)(upper_name - upper)))
		die_msg("mount overlay on /: upperdir and workdir must be siblings");
	*upper_name++ = *work_name++ = '\0';
	add_view(upper, scratch, "u");
	size_t used = strlen(data);
	if ((size_t)snprintf(data + used, cap - used, "upperdir=%s/u/%s,workdir=%s/u/%s", r->path, upper_name,
			     r->path, work_name) >= cap - used)
		die_msg("mount overlay on /: options too long");
	close(scratch);
	as_container_root(true); /* its work dir and copies up are made with these ids */
	TRY(mount("overlay", r->path, "overlay", d->mflags & ~MS_REC, data), "mount overlay on /");
	as_container_root(false);
	free(opts);
	free(data);
}

/* Put the detached mount TREE (a bind's, of SOURCE) on the target FD (TARGET). */
static void move_tree(int tree, int fd, const char *source, const char *target)
{
	struct stat from, to;

	TRY(fstat(tree, &from), "fstat %s", source);
	TRY(fstat(fd, &to), "fstat %s", target);
	if (S_ISDIR(from.st_mode) != S_ISDIR(to.st_mode)) { /* as mount(2) would say */
		errno = S_ISDIR(from.st_mode) ? ENOTDIR : EISDIR;
		err_blame = IN_ROOT; /* the client's bind */
		die("mount bind %s on %s", source, target);
	}
	TRY(syscall(SYS_move_mount, tree, "", fd, "", CORRAL_MOVE_MOUNT_F_EMPTY_PATH | CORRAL_MOVE_MOUNT_T_EMPTY_PATH),
	    "mount bind %s on %s", source, target);
	close(tree);
}

static void do_mount(struct root *r, const struct directive *d)
{
	const char *fstype = d->f[0], *target = d->f[2];
	const char *source = strcmp(d->f[1], "-") ? d->f[1] : NULL;
	const char *data = strcmp(d->f[4], "-") ? d->f[4] : NULL;
	bool bind = d->mflags & MS_BIND;
	char path[32], dev[32];
	int loopfd = -1, fd;

	if (d->opts & OPT_HOST) { /* a host path of the daemon's: this namespace's copy of it */
		TRY(fd = open(target, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), "open %s", target);
	} else {
		err_blame = IN_ROOT;
		fd = mount_target(r->fd, d);
		err_blame = "";
	}
	if (fd < 0)
		return;
	bool is_root = !(d->opts & OPT_HOST) && same_file(fd, r->fd);
	bool mapped = (d->opts & OPT_IDMAP) && own_ids;
	/* A bind of a filesystem that cannot be id-mapped (devtmpfs, 9p...) is made as it
	 * is: its files show the overflow ids, as under Docker's userns-remap. */
	int tree = mapped && bind ? idmapped_tree(source, d->mflags & MS_REC, mount_attrs(d->mflags)) : -1;
	if (mapped && (tree >= 0 || !bind)) {
		if (tree >= 0)
			move_tree(tree, fd, source, target);
		else if (is_root) /* the root overlay (parse_mount_flags allows no other) */
			mount_overlay_as_container_root(r, d);
		else
			die_msg("mount %s on %s: idmap is for the root overlay only", fstype, target);
		close(fd);
		if (is_root) {
			reopen_root(r);
			r->mounted = true;
		}
		return;
	}
	if ((d->opts & OPT_LOOP) && source) {
		loopfd = attach_loop(source, d->mflags & MS_RDONLY, dev);
		source = dev;
	}
	fd_path(fd, path);
	if (bind ? mount(source, path, NULL, MS_BIND | (d->mflags & MS_REC), NULL)
		 : mount(source, path, fstype, d->mflags & ~MS_REC, data)) {
		/* A target of the wrong kind (a file for a directory...) is the root's doing. */
		if (!(d->opts & OPT_HOST) && (errno == ENOTDIR || errno == EISDIR || errno == ENOENT))
			err_blame = IN_ROOT;
		if (bind)
			die("mount bind %s on %s", source ? source : "-", target);
		die("mount %s on %s", fstype, target);
	}
	if (loopfd >= 0)
		close(loopfd); /* the mount holds the device now */
	close(fd);
	if (is_root) {
		reopen_root(r);
		r->mounted = true;
	}
	if (bind && (d->mflags & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)))
		remount_bind(r, d, is_root);
}

static void bring_up_loopback(void)
{
	struct ifreq ifr = { .ifr_name = "lo" };
	int fd;

	TRY(fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket AF_INET");
	TRY(ioctl(fd, SIOCGIFFLAGS, &ifr), "ioctl SIOCGIFFLAGS lo");
	ifr.ifr_flags |= IFF_UP;
	TRY(ioctl(fd, SIOCSIFFLAGS, &ifr), "ioctl SIOCSIFFLAGS lo");
	close(fd);
}

/* Listen on a SOCK_SEQPACKET socket at a host path, mode 0600 (a stale one is replaced). */
static int listen_socket(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct stat st;
	int fd, rc, saved;

	memcpy(addr.sun_path, path, strlen(path) + 1); /* its length was checked with the spec */
	TRY(fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0), "socket AF_UNIX");
	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode) && unlink(path) < 0)
		die("unlink %s", path);
	mode_t old = umask(0177);
	rc = bind(fd, (struct sockaddr *)&addr, sizeof addr);
	saved = errno;
	umask(old);
	errno = saved;
	TRY(rc, "bind %s", path);
	TRY(listen(fd, 16), "listen %s", path);
	return fd;
}

static void pivot(int rootfd)
{
	TRY(fchdir(rootfd), "fchdir root");
	TRY(syscall(SYS_pivot_root, ".", "."), "pivot_root");
	TRY(umount2(".", MNT_DETACH), "umount2 old root");
	TRY(chdir("/"), "chdir /");
}


/* Send one message (NUL-terminated strings, LEN bytes) and NFDS fds on the
 * control socket; false if fd 3 is no socket (no daemon passed one). */
static bool tell_daemon(const char *msg, size_t len, const int *fds, size_t nfds)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * 2)];
	} control = { 0 };
	struct iovec iov = { (void *)msg, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (nfds) {
		mh.msg_control = control.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
	}
	return sendmsg(CONTROL_FD, &mh, MSG_NOSIGNAL) >= 0;
}

/* Give the daemon the new network namespace: an fd of it and a NETLINK_ROUTE
 * socket opened in it, so it makes and configures the container's devices while
 * the launcher sets up. False (and fd 3 closed) if there is no control socket. */
static bool report_namespace(void)
{
	static const char msg[] = "netns";
	int fds[2];
	bool sent;

	TRY(fds[0] = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC), "open /proc/self/ns/net");
	TRY(fds[1] = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE), "socket AF_NETLINK");
	sent = tell_daemon(msg, sizeof msg, fds, 2);
	close(fds[0]);
	close(fds[1]);
	if (!sent)
		close(CONTROL_FD);
	return sent;
}

/* Set-up state shared by the launcher and PID 1 (its fork). */
struct setup {
	struct root r;
	struct root host; /* host mounts never use the root */
	int listen_fd;
};

/* The argument strings from argv[1] on: the room a label is written over. */
static char *args_start, *args_end;

/* Write "launch\0LABEL\0" over the argument strings (the rest zeroed), so
 * /proc/PID/cmdline of the launcher and of PID 1 is what an exec of
 * `corral-init launch LABEL` gives (the daemon finds its inits by it). */
static void set_label(const char *label)
{
	size_t need = sizeof "launch" + strlen(label) + 1;

	if (!args_start || need > (size_t)(args_end - args_start))
		die_msg("label longer than the argument space: %s", label);
	memset(args_start, 0, (size_t)(args_end - args_start));
	memcpy(args_start, "launch", sizeof "launch");
	memcpy(args_start + sizeof "launch", label, strlen(label) + 1);
}

/* The container's cgroup of the v2 tree, which PID 1 is cloned into (-1: none). */
static int v2_cgroup = -1;

static void join_cgroup(const char *file)
{
	struct statfs fs;
	int fd;

	/* A v2 cgroup.procs write takes the kernel's global threadgroup lock for writing,
	 * an RCU grace period (~7 ms here). PID 1 is cloned straight into that cgroup
	 * instead (CLONE_INTO_CGROUP takes the lock for reading): keep its directory. */
	if (v2_cgroup < 0 && statfs(file, &fs) == 0 && fs.f_type == CGROUP2_SUPER_MAGIC) {
		char *dir = xstrdup(file), *slash = strrchr(dir, '/');
		if (slash && !strcmp(slash, "/cgroup.procs")) {
			*slash = '\0';
			TRY(v2_cgroup = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), "open %s", dir);
			free(dir);
			return;
		}
		free(dir);
	}
	/* "0" is the writer itself: to a v1 tasks file, a move of the one thread that
	 * skips the kernel's global threadgroup lock (and its RCU grace period). */
	TRY(fd = open(file, O_WRONLY | O_CLOEXEC), "open %s", file);
	TRY(write(fd, "0\n", 2), "write %s", file);
	close(fd);
}

/* Fork PID 1 into the v2 cgroup kept by join_cgroup, if any (a kernel before 5.7
 * has no CLONE_INTO_CGROUP: then the launcher joins it first, as before). */
static pid_t fork_into_cgroup(void)
{
	struct clone_args args = { .flags = CLONE_INTO_CGROUP, .exit_signal = SIGCHLD };
	long pid;
	int fd;

	if (v2_cgroup < 0)
		return fork();
	args.cgroup = (uint64_t)v2_cgroup;
	pid = syscall(SYS_clone3, &args, sizeof args);
	if (pid >= 0 || (errno != ENOSYS && errno != E2BIG && errno != EINVAL))
		return (pid_t)pid;
	TRY(fd = openat(v2_cgroup, "cgroup.procs", O_WRONLY | O_CLOEXEC), "open cgroup.procs");
	TRY(write(fd, "0\n", 2), "write cgroup.procs");
	close(fd);
	return fork();
}

/* Apply one directive (umask 0: the spec's modes are exact). */
static void apply(struct setup *s, const struct directive *d)
{
	struct stat st;
	char path[32];
	int fd;

	/* All but cgroups and host mounts are made in the container root. */
	if (s->r.fd < 0 && d->kind != D_CGROUP && d->kind != D_ROOT && d->kind != D_LABEL &&
	    d->kind != D_SECCOMP && d->kind != D_USERNS && d->kind != D_ADMIN && d->kind != D_END &&
	    !(d->kind == D_MOUNT && (d->opts & OPT_HOST)))
		die_msg("launch spec: %s before root", kinds[d->kind].name);
	if (d->kind == D_MKNOD || d->kind == D_SYMLINK || d->kind == D_MKDIR)
		err_blame = IN_ROOT;
	switch (d->kind) {
	case D_CGROUP:
		join_cgroup(d->f[0]);
		break;
	case D_USERNS:
		map_ids(d->first, d->count);
		break;
	case D_ROOT:
		if (keeper >= 0) /* no userns line: the host's ids */
			map_ids(0, UINT32_MAX);
		s->r.path = d->f[0];
		reopen_root(&s->r);
		break;
	case D_MOUNT:
		do_mount(d->opts & OPT_HOST ? &s->host : &s->r, d);
		break;
	case D_MKNOD:
		create_in_root(s->r.fd, d->f[0], S_IFCHR | d->mode, d->dev, NULL);
		break;
	case D_SYMLINK:
		create_in_root(s->r.fd, d->f[1], 0, 0, d->f[0]);
		break;
	case D_MKDIR:
		create_in_root(s->r.fd, d->f[0], S_IFDIR | d->mode, 0, NULL);
		fd = must_open_in_root(s->r.fd, d->f[0], O_PATH | O_DIRECTORY);
		fd_path(fd, path);
		/* Only if needed: a chmod on the overlay copies the directory up. */
		TRY(fstat(fd, &st), "stat %s", d->f[0]);
		as_container_root(true);
		if ((st.st_mode & 07777) != d->mode)
			TRY(chmod(path, d->mode), "chmod %s", d->f[0]);
		as_container_root(false);
		close(fd);
		break;
	case D_HOSTNAME:
		TRY(sethostname(d->f[0], strlen(d->f[0])), "sethostname %s", d->f[0]);
		break;
	case D_LOOPBACK:
		bring_up_loopback();
		break;
	case D_SOCKET:
		s->listen_fd = listen_socket(d->f[0]);
		break;
	case D_LABEL:
		set_label(d->f[0]);
		break;
	case D_SECCOMP: /* parsed: the jobs load it */
	case D_ADMIN:   /* parsed: see finish_setup */
	case D_END:
		break;
	}
	err_blame = "";
}

/* The limits the jobs start with: the daemon's (see enter_userns). */
static struct rlimit job_defaults[RLIM_NLIMITS];
static bool limits_raised;

/*
 * PID 1 becomes the container's root: in its user namespace, with capabilities there
 * only. Its hard limits are raised first to what the kernel allows (if the daemon has
 * CAP_SYS_RESOURCE), since only the host's root may raise them and a job may ask for
 * more than the daemon had; each
 * job without limits of its own then starts with the daemon's (job_defaults).
 */
static void enter_userns(void)
{
	unsigned long long nr_open = 1024 * 1024;
	char *text;
	int fd;

	if (userns_fd < 0)
		return;
	if ((fd = open("/proc/sys/fs/nr_open", O_RDONLY | O_CLOEXEC)) >= 0) {
		text = read_all(fd, "/proc/sys/fs/nr_open");
		parse_uint(strtok(text, "\n"), UINT32_MAX, &nr_open);
		free(text);
		close(fd);
	}
	for (int r = 0; r < RLIM_NLIMITS; r++) {
		struct rlimit max;
		TRY(getrlimit(r, &job_defaults[r]), "getrlimit %d", r);
		max = (struct rlimit){ job_defaults[r].rlim_cur, r == RLIMIT_NOFILE ? nr_open : RLIM_INFINITY };
		if (setrlimit(r, &max) < 0 && errno != EPERM) /* EPERM: no CAP_SYS_RESOURCE here either */
			die("setrlimit %d", r);
	}
	limits_raised = true;
	TRY(setns(userns_fd, CLONE_NEWUSER), "setns the user namespace");
	close(userns_fd);
	userns_fd = -1;
	if (setgroups(0, NULL) < 0 || setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)
		die("become the container's root");
}

/*
 * The jobs' mount namespace under `admin`: a copy of PID 1's, owned by the container's
 * user namespace, so what the set-up mounted comes into it locked (not to be unmounted,
 * moved or made writable from inside) and only what the jobs mount there is theirs. A
 * child makes it (PID 1 keeps the host's capabilities until enter_userns) and PID 1
 * keeps an fd of it: PID 1, and the daemon that reaches the container's files through
 * PID 1's root, never wait on a FUSE server of the container's.
 */
static void make_admin_namespace(void)
{
	int sync[2];
	char path[64], c;
	pid_t pid;

	if (userns_fd < 0) {
		errno = userns_errno;
		die("admin: no user namespace");
	}
	TRY(pipe2(sync, O_CLOEXEC), "pipe2");
	TRY(pid = fork(), "fork");
	if (pid == 0) {
		close(sync[0]);
		TRY(setns(userns_fd, CLONE_NEWUSER), "setns the user namespace");
		TRY(unshare(CLONE_NEWNS), "unshare CLONE_NEWNS");
		if (write(sync[1], "", 1) == 1)
			pause(); /* until PID 1 has the namespace and kills it */
		_exit(1);
	}
	close(sync[1]);
	if (read(sync[0], &c, 1) != 1)
		die_msg("the jobs' mount namespace could not be made");
	snprintf(path, sizeof path, "/proc/%d/ns/mnt", (int)pid);
	TRY(admin_ns = open(path, O_RDONLY | O_CLOEXEC), "open %s", path);
	kill(pid, SIGKILL);
	TRY(waitpid(pid, NULL, 0), "waitpid");
	close(sync[0]);
}

/* In PID 1: the directives the launcher left, then pivot into the root. */
static void finish_setup(struct setup *s, struct spec *sp)
{
	for (size_t i = 0; i < sp->n; i++)
		if (!sp->d[i].done)
			apply(s, &sp->d[i]);
	if (!s->r.mounted) { /* pivot_root needs a mount point */
		TRY(mount(s->r.path, s->r.path, NULL, MS_BIND | MS_REC, NULL), "mount bind %s on itself",
		    s->r.path);
		reopen_root(&s->r);
	}
	pivot(s->r.fd);
	close(s->r.fd);
	if (admin)
		make_admin_namespace();
	enter_userns();
}

/* ---- jobs ------------------------------------------------------------- */

static const struct {
	const char *name;
	int resource;
} rlimit_names[] = {
	{ "as", RLIMIT_AS },           { "core", RLIMIT_CORE },         { "cpu", RLIMIT_CPU },
	{ "data", RLIMIT_DATA },       { "fsize", RLIMIT_FSIZE },       { "locks", RLIMIT_LOCKS },
	{ "memlock", RLIMIT_MEMLOCK }, { "msgqueue", RLIMIT_MSGQUEUE }, { "nice", RLIMIT_NICE },
	{ "nofile", RLIMIT_NOFILE },   { "nproc", RLIMIT_NPROC },       { "rss", RLIMIT_RSS },
	{ "rtprio", RLIMIT_RTPRIO },   { "rttime", RLIMIT_RTTIME },     { "sigpending", RLIMIT_SIGPENDING },
	{ "stack", RLIMIT_STACK },
};

/* Docker's default set without MKNOD. */
static const int privileged_caps[] = {
	CAP_CHOWN,      CAP_DAC_OVERRIDE, CAP_FSETID,      CAP_FOWNER,  CAP_SETGID,
	CAP_SETUID,     CAP_SETFCAP,      CAP_SETPCAP,     CAP_NET_BIND_SERVICE,
	CAP_SYS_CHROOT, CAP_KILL,         CAP_AUDIT_WRITE, CAP_NET_RAW,
};

struct limit {
	const char *name;
	int resource;
	struct rlimit rl;
};

struct job_spec {
	unsigned long long id, output_limit;
	const char *user, *dir;
	bool privileged, stdin_pipe;
	bool has_limit;     /* output through pumps, cut at output_limit */
	struct winsize tty; /* ws_row 0: no terminal */
	char **env, **argv;
	size_t nenv, nargv, nlimits;
	struct limit *limits;
};

struct user {
	uid_t uid;
	gid_t gid;
	const char *name, *home;
};

/* A decimal limit or "unlimited". */
static bool parse_rlim(const char *s, rlim_t *v)
{
	unsigned long long n = RLIM_INFINITY;
	bool ok = !strcmp(s, "unlimited") || parse_uint(s, RLIM_INFINITY - 1, &n);

	*v = (rlim_t)n;
	return ok;
}

/* Parse "NAME:SOFT:HARD" (modified in place). */
static bool parse_limit(char *s, struct limit *l)
{
	char *soft = strchr(s, ':'), *hard = soft ? strchr(soft + 1, ':') : NULL;

	if (!hard)
		return false;
	*soft++ = '\0';
	*hard++ = '\0';
	for (size_t i = 0; i < ARRAY_LEN(rlimit_names); i++)
		if (!strcmp(s, rlimit_names[i].name)) {
			*l = (struct limit){ rlimit_names[i].name, rlimit_names[i].resource, { 0, 0 } };
			return parse_rlim(soft, &l->rl.rlim_cur) && parse_rlim(hard, &l->rl.rlim_max);
		}
	return false;
}

/* "ROWS:COLS", each 1-65535. */
static bool parse_winsize(const char *s, struct winsize *ws)
{
	unsigned long long rows, cols;
	char buf[32], *colon;

	if (strlen(s) >= sizeof buf)
		return false;
	strcpy(buf, s);
	if (!(colon = strchr(buf, ':')))
		return false;
	*colon = '\0';
	if (!parse_uint(buf, 65535, &rows) || !parse_uint(colon + 1, 65535, &cols) || !rows || !cols)
		return false;
	*ws = (struct winsize){ .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };
	return true;
}

/* Parse the key=value strings of a spawn request; NULL or an error message. */
static const char *parse_job(char **strs, int n, struct job_spec *js, bool *has_id)
{
	js->env = xcalloc((size_t)n + 1, sizeof(char *));
	js->argv = xcalloc((size_t)n + 1, sizeof(char *));
	js->limits = xcalloc((size_t)n, sizeof(struct limit));
	for (int i = 1; i < n; i++) {
		char *key = strs[i], *val = strchr(key, '=');
		if (!val)
			return "spawn: malformed field";
		*val++ = '\0';
		if (!strcmp(key, "id") && parse_uint(val, ULLONG_MAX, &js->id))
			*has_id = true;
		else if (!strcmp(key, "user") && *val)
			js->user = val;
		else if (!strcmp(key, "privileged") && (!strcmp(val, "0") || !strcmp(val, "1")))
			js->privileged = *val == '1';
		else if (!strcmp(key, "dir") && *val)
			js->dir = val;
		else if (!strcmp(key, "env") && strchr(val, '=') && *val != '=')
			js->env[js->nenv++] = val;
		else if (!strcmp(key, "rlimit") && parse_limit(val, &js->limits[js->nlimits]))
			js->nlimits++;
		else if (!strcmp(key, "arg"))
			js->argv[js->nargv++] = val;
		else if (!strcmp(key, "stdin") && (!strcmp(val, "0") || !strcmp(val, "1")))
			js->stdin_pipe = *val == '1';
		else if (!strcmp(key, "tty") && parse_winsize(val, &js->tty))
			;
		else if (!strcmp(key, "limit") && parse_uint(val, ULLONG_MAX, &js->output_limit))
			js->has_limit = true;
		else
			return "spawn: bad or unknown field";
	}
	if (!*has_id)
		return "spawn: no id";
	return js->nargv ? NULL : "spawn: no arg";
}

/* Find the user (a name, or a uid) in the container's /etc/passwd. */
static void lookup_user(const char *want, struct user *u)
{
	static char uid_text[24];
	unsigned long long uid = 0, gid, id, group = 0;
	const char *colon = strchr(want, ':');
	bool has_group = false;

	if (colon) { /* "UID:GID": numbers, the group given (neither needs /etc/passwd) */
		size_t n = (size_t)(colon - want);
		if (n >= sizeof uid_text)
			die_msg("user %s: not UID:GID", want);
		memcpy(uid_text, want, n);
		uid_text[n] = '\0';
		if (!parse_uint(uid_text, UINT32_MAX - 1, &uid) || !parse_uint(colon + 1, UINT32_MAX - 1, &group))
			die_msg("user %s: not UID:GID", want);
		want = uid_text;
		has_group = true;
	}
	bool numeric = parse_uint(want, UINT32_MAX - 1, &uid);
	char *text = NULL, *line, *next;
	struct stat st;
	int fd = open("/etc/passwd", O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);

	if (fd < 0 && !(numeric && errno == ENOENT))
		die("user %s: open /etc/passwd", want);
	if (fd >= 0) {
		TRY(fstat(fd, &st), "fstat /etc/passwd");
		if (!S_ISREG(st.st_mode)) /* a FIFO would block */
			die_msg("user %s: /etc/passwd is not a regular file", want);
		text = read_all(fd, "/etc/passwd");
		close(fd);
	}
	for (line = text; line; line = next) {
		char *f[7];
		int n = 0;
		if ((next = strchr(line, '\n')))
			*next++ = '\0';
		for (char *p = line; p && n < 7; n++) {
			f[n] = p;
			if ((p = strchr(p, ':')))
				*p++ = '\0';
		}
		if (n == 7 && parse_uint(f[2], UINT32_MAX - 1, &id) && parse_uint(f[3], UINT32_MAX - 1, &gid) &&
		    (numeric ? id == uid : !strcmp(f[0], want))) {
			*u = (struct user){ (uid_t)id, (gid_t)(has_group ? group : gid), f[0], *f[5] ? f[5] : "/" };
			return;
		}
	}
	if (!numeric)
		die_msg("unknown user %s", want);
	*u = (struct user){ (uid_t)uid, (gid_t)(has_group ? group : uid), want, "/" };
}

/* PID 1 ignores these (and blocks SIGCHLD); every other signal it got at their
 * defaults (the daemon spawns the zygote and launchers so) and has no handler. */
static const int init_ignored[] = { SIGTERM, SIGINT, SIGHUP, SIGPIPE };

/* A job's signals as exec'd by a fresh shell: defaults, nothing blocked. */
static void reset_signals(void)
{
	struct sigaction sa = { .sa_handler = SIG_DFL };
	sigset_t none;

	for (size_t i = 0; i < ARRAY_LEN(init_ignored); i++)
		TRY(sigaction(init_ignored[i], &sa, NULL), "sigaction %d", init_ignored[i]);
	sigemptyset(&none);
	TRY(sigprocmask(SIG_SETMASK, &none, NULL), "sigprocmask");
}

static void set_caps(uint64_t caps)
{
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct data[2];

	for (int i = 0; i < 2; i++) {
		uint32_t word = (uint32_t)(caps >> (32 * i));
		data[i] = (struct __user_cap_data_struct){ word, word, word };
	}
	TRY(syscall(SYS_capset, &hdr, data), "capset");
}

/*
 * Become the user. Unprivileged: no capability left anywhere and no new
 * privileges. Privileged: the bounding, permitted, effective and inheritable
 * sets are privileged_caps, and CAP_SYS_ADMIN under `admin` (and the ambient set
 * too for a user other than root, so the capabilities survive its exec).
 */
static void drop_privileges(const struct user *u, bool privileged)
{
	uint64_t caps = 0;

	for (size_t i = 0; privileged && i < ARRAY_LEN(privileged_caps); i++)
		caps |= 1ULL << privileged_caps[i];
	if (privileged && admin)
		caps |= 1ULL << CAP_SYS_ADMIN;
	for (int cap = 0; cap < 64; cap++) {
		if (!(caps & (1ULL << cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
			if (errno == EINVAL) /* past the last capability */
				break;
			die("prctl PR_CAPBSET_DROP %d", cap);
		}
	}
	if (caps && u->uid != 0 && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
		die("prctl PR_SET_KEEPCAPS");
	TRY(setgroups(0, NULL), "setgroups");
	TRY(setgid(u->gid), "setgid %u", (unsigned)u->gid);
	TRY(setuid(u->uid), "setuid %u", (unsigned)u->uid);
	set_caps(caps);
	TRY(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl PR_CAP_AMBIENT_CLEAR_ALL");
	for (int cap = 0; caps && u->uid != 0 && cap < 64; cap++)
		if ((caps & (1ULL << cap)) && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0)
			die("prctl PR_CAP_AMBIENT_RAISE %d", cap);
	if (!privileged && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		die("prctl PR_SET_NO_NEW_PRIVS");
}

/* Load the job's seccomp filter (if the spec gave one): inherited by all it starts. */
static void load_filter(const struct sock_fprog *prog)
{
	if (prog->len && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prog, 0, 0) < 0)
		die("load the seccomp filter");
}

/* The defaults, then the request's env= entries in order (each replaces a default of its name). */
static char **make_env(const struct job_spec *js, const struct user *u)
{
	char **env = xcalloc(js->nenv + 5, sizeof(char *));
	size_t n = 0, j;

	env[n++] = DEFAULT_PATH;
	env[n++] = concat("HOME=", u->home);
	env[n++] = concat("USER=", u->name);
	env[n++] = concat("LOGNAME=", u->name);
	for (size_t i = 0; i < js->nenv; i++) {
		size_t k = strcspn(js->env[i], "=") + 1;
		for (j = 0; j < n && strncmp(env[j], js->env[i], k); j++)
			;
		env[j] = js->env[i];
		n += j == n;
	}
	return env;
}

/*
 * The job's child: set up and exec, or report "step: error" on REPORT and exit 127.
 * First it joins the job's own cgroups (JOIN: open cgroup.procs files), before any
 * of the job's code runs, so everything it starts is counted and can be killed there.
 */
static noreturn void run_job(const struct job_spec *js, int in, const char *slave, int out, int errfd,
			     int report, const int *join, int njoin)
{
	struct user u;
	int tty = -1;

	err_fd = report;
	err_status = 127;
	for (int i = 0; i < njoin; i++)
		if (write(join[i], "0", 1) != 1)
			die("join the job's cgroup");
	TRY(setsid(), "setsid");
	reset_signals();
	if (slave) { /* the terminal becomes the new session's controlling one, and fds 0-2 */
		TRY(tty = open(slave, O_RDWR | O_CLOEXEC), "open %s", slave);
		TRY(ioctl(tty, TIOCSCTTY, 0), "ioctl TIOCSCTTY");
		in = out = errfd = tty;
	}
	/* Its user, directory and program are then found as the container's jobs see them. */
	if (admin_ns >= 0)
		TRY(setns(admin_ns, CLONE_NEWNS), "setns the jobs' mount namespace");
	/* fds 0-2 of PID 1 are /dev/null, so IN, OUT, ERRFD and REPORT are all above 2 */
	if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(errfd, 2) < 0)
		die("dup2");
	if (report != 3 && dup3(report, 3, O_CLOEXEC) < 0)
		die("dup3");
	err_fd = 3;
	TRY(close_range(4, ~0U, 0), "close_range");
	lookup_user(js->user ? js->user : js->privileged ? "root" : "corral", &u);
	if (slave && fchown(0, u.uid, (gid_t)-1) < 0) /* its own terminal, as login gives one */
		die("fchown %s", slave);
	for (int r = 0; limits_raised && r < RLIM_NLIMITS; r++) {
		size_t i;
		for (i = 0; i < js->nlimits && js->limits[i].resource != r; i++)
			;
		if (i == js->nlimits) /* the job's own, if any, come next */
			TRY(setrlimit(r, &job_defaults[r]), "setrlimit %d", r);
	}
	for (size_t i = 0; i < js->nlimits; i++)
		TRY(setrlimit(js->limits[i].resource, &js->limits[i].rl), "setrlimit %s", js->limits[i].name);
	if (js->dir && chdir(js->dir) < 0)
		die("chdir %s", js->dir);
	if (!js->dir && chdir(u.home) < 0 && chdir("/") < 0)
		die("chdir /");
	/* runc's order: without no_new_privs (a privileged job) loading a filter takes
	 * CAP_SYS_ADMIN, so it comes before the capabilities go; with it, right before the
	 * exec, so the set-up's own calls need not be allowed by the profile. */
	if (js->privileged)
		load_filter(&job_filters[1]);
	drop_privileges(&u, js->privileged);
	environ = make_env(js, &u); /* execvpe searches the job's PATH */
	if (!js->privileged)
		load_filter(&job_filters[0]);
	execvpe(js->argv[0], js->argv, environ);
	die("exec %s", js->argv[0]);
}

/* ---- PID 1: the server ------------------------------------------------ */

/* "CALL: strerror(errno)" in BUF, for a reply. */
static const char *error_text(char buf[static 256], const char *call)
{
	snprintf(buf, 256, "%s: %s", call, strerror(errno));
	return buf;
}

struct job {
	struct job *next;
	unsigned long long id;
	pid_t pid;
	int status_fd;
	int input; /* the write end of its stdin pipe, or its terminal's master; -1: none */
	bool tty;
};

/*
 * One output stream of a job with an output limit: the job writes into a pipe,
 * PID 1 copies it to the daemon's file, at most LEFT bytes more. Any process of
 * the job (a background child too, after the job's first process exited) writes
 * into the same pipe, and the file cannot grow past the limit: at the first byte
 * beyond it PID 1 closes the pipe (writers get SIGPIPE), kills the job's process
 * group and announces "cut ID STREAM". No polling: the cut is at the byte.
 */
struct pump {
	struct pump *next;
	unsigned long long id, left;
	const char *stream; /* "stdout" or "stderr" */
	pid_t pgid;         /* the job's process group (its first process's pid) */
	int in, out;        /* the pipe's read end (a terminal's master), the output file */
	bool tty;           /* IN is a terminal's master: EIO is its end of file */
};

struct server {
	int listen_fd, sig_fd, devnull;
	int *clients; /* -1: closed, compacted after each poll round */
	size_t nclients;
	struct job *jobs;
	struct pump *pumps;
	size_t npumps;
};

struct msg {
	char *buf;
	size_t len;
};

static void msg_add(struct msg *m, const char *s)
{
	size_t n = strlen(s) + 1;

	m->buf = xrealloc(m->buf, m->len + n);
	memcpy(m->buf + m->len, s, n);
	m->len += n;
}

static void close_client(struct server *s, size_t i)
{
	if (s->clients[i] >= 0)
		close(s->clients[i]);
	s->clients[i] = -1;
}

/* Send M to client I; a client that cannot take it (in SEND_TIMEOUT_SEC) is dropped. */
static void msg_send(struct server *s, size_t i, const struct msg *m)
{
	if (s->clients[i] >= 0 && send(s->clients[i], m->buf, m->len, MSG_NOSIGNAL) < 0)
		close_client(s, i);
}

/* Send the strings up to NULL as one packet to client I. */
static void reply(struct server *s, size_t i, ...)
{
	struct msg m = { 0 };
	const char *str;
	va_list ap;

	va_start(ap, i);
	while ((str = va_arg(ap, const char *)))
		msg_add(&m, str);
	va_end(ap);
	msg_send(s, i, &m);
	free(m.buf);
}

static struct job **find_job(struct server *s, unsigned long long id, pid_t pid)
{
	struct job **j;

	for (j = &s->jobs; *j; j = &(*j)->next)
		if (pid ? (*j)->pid == pid : (*j)->id == id)
			break;
	return j;
}

static void close_input(struct job *j)
{
	if (j->input >= 0)
		close(j->input);
	j->input = -1;
}

static bool pump(struct server *s, struct pump *p);
static void drop_pump(struct server *s, struct pump *p);

/*
 * At a terminal job's leader's exit: its pump copies (under the same output limit)
 * until EIO (every slave closed). The kernel moves a slave's output to the master in
 * a work item, so the last of it may arrive after the writer exited; a process left
 * holding the terminal is waited for at most DRAIN_MS, after which the terminal ends
 * with its leader.
 */
#define DRAIN_MS 100
static void drain_terminal(struct server *s, struct job *j)
{
	struct pump *p = s->pumps;

	while (p && !(p->tty && p->id == j->id))
		p = p->next;
	if (!p)
		return; /* cut already, or done */
	for (;;) {
		struct pollfd pfd = { .fd = p->in, .events = POLLIN };
		if (poll(&pfd, 1, DRAIN_MS) <= 0 || !pump(s, p))
			break;
	}
	drop_pump(s, p);
}

/* Record a job's status in its status file, then tell every client. */
static void job_exited(struct server *s, pid_t pid, int wstatus)
{
	struct job **jp = find_job(s, 0, pid), *j = *jp;
	char id[24], status[16], file[48];

	if (!j) /* an orphan, or a child that failed before exec */
		return;
	if (j->tty) /* what the terminal printed before the leader ended comes before its exit */
		drain_terminal(s, j);
	close_input(j);
	snprintf(id, sizeof id, "%llu", j->id);
	snprintf(status, sizeof status, "%d",
		 WIFSIGNALED(wstatus) ? 128 + WTERMSIG(wstatus) : WEXITSTATUS(wstatus));
	/* The second line tells "killed by signal N" from "exit 128+N", which the status cannot. */
	snprintf(file, sizeof file, "%s\n%s %d\n", status, WIFSIGNALED(wstatus) ? "signal" : "exit",
		 WIFSIGNALED(wstatus) ? WTERMSIG(wstatus) : WEXITSTATUS(wstatus));
	if (write(j->status_fd, file, strlen(file)) < 0) {
		/* the exit message still tells the daemon */
	}
	close(j->status_fd);
	for (size_t i = 0; i < s->nclients; i++)
		reply(s, i, "exit", id, status, NULL);
	*jp = j->next;
	free(j);
}

static void reap(struct server *s)
{
	struct signalfd_siginfo si;
	int wstatus;
	pid_t pid;

	while (read(s->sig_fd, &si, sizeof si) == (ssize_t)sizeof si)
		;
	while ((pid = waitpid(-1, &wstatus, WNOHANG)) > 0)
		job_exited(s, pid, wstatus);
	if (pid < 0 && errno != ECHILD && errno != EINTR)
		die("waitpid");
}

/*
 * The job's input, kept by PID 1 in *INPUT (so it outlives any daemon): the write end
 * of a pipe whose read end *IN becomes the job's stdin, or the master of a terminal
 * made in the container's devpts whose slave's path is put in SLAVE. False with ERR set.
 */
static bool make_input(const struct job_spec *js, int *input, int *in, char slave[static 64],
		       char err[static 1024])
{
	int p[2];

	if (js->tty.ws_row) {
		if ((*input = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK)) < 0) {
			error_text(err, "open /dev/ptmx");
			return false;
		}
		if (unlockpt(*input) < 0 || ptsname_r(*input, slave, 64) != 0 ||
		    ioctl(*input, TIOCSWINSZ, &js->tty) < 0) {
			error_text(err, "set up the terminal");
			close(*input);
			*input = -1;
			return false;
		}
	} else if (js->stdin_pipe) {
		if (pipe2(p, O_CLOEXEC) < 0) {
			error_text(err, "pipe2");
			return false;
		}
		*in = p[0];
		*input = p[1];
	}
	return true;
}

static void add_pump(struct server *s, const struct job_spec *js, const char *stream, pid_t pgid,
		     int in, int out, bool tty)
{
	struct pump *p = xcalloc(1, sizeof *p);

	*p = (struct pump){ s->pumps, js->id, js->has_limit ? js->output_limit : ULLONG_MAX, stream, pgid,
			    in, out, tty };
	s->pumps = p;
	s->npumps++;
}

/*
 * Fork the job's child and wait until it has exec'd: its pid, or -1 with ERR set.
 * With an output limit, the child writes into pipes that pumps drain into FDS[0-1].
 * A terminal job's output (its stdout and stderr alike) is its master's: one pump
 * drains that into FDS[0], under the same limit (none: no limit).
 */
static pid_t start_job(struct server *s, const struct job_spec *js, int *fds, int nfds, int *input,
		       char err[static 1024])
{
	int pipefd[2] = { -1, -1 }, in = s->devnull;
	int outp[2][2] = { { -1, -1 }, { -1, -1 } }, files[2] = { -1, -1 }, master = -1;
	char slave[64] = "";
	pid_t pid = -1;

	*input = -1;
	if (!make_input(js, input, &in, slave, err))
		return -1;
	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		error_text(err, "pipe2");
		goto out;
	}
	if (*slave && ((master = fcntl(*input, F_DUPFD_CLOEXEC, 3)) < 0 ||
		       (files[0] = fcntl(fds[0], F_DUPFD_CLOEXEC, 3)) < 0)) {
		error_text(err, "terminal output");
		goto out;
	}
	for (int k = 0; !*slave && js->has_limit && k < 2; k++)
		if (pipe2(outp[k], O_CLOEXEC) < 0 || fcntl(outp[k][0], F_SETFL, O_NONBLOCK) < 0 ||
		    (files[k] = fcntl(fds[k], F_DUPFD_CLOEXEC, 3)) < 0) {
			error_text(err, "output pipe");
			goto out;
		}
	if ((pid = fork()) == 0)
		run_job(js, in, *slave ? slave : NULL, outp[0][1] >= 0 ? outp[0][1] : fds[0],
			outp[1][1] >= 0 ? outp[1][1] : fds[1], pipefd[1], fds + 3, nfds - 3);
	if (pid < 0)
		error_text(err, "fork");
	close(pipefd[1]);
	pipefd[1] = -1;
	/* EOF: the exec succeeded (no word in time from an admin container's job: taken so) */
	if (pid > 0 && read_report(pipefd[0], err, 1024, admin_ns >= 0 ? ADMIN_EXEC_WAIT_MS : -1))
		pid = -1;
	if (pid > 0 && master >= 0) {
		add_pump(s, js, "stdout", pid, master, files[0], true);
		master = files[0] = -1; /* the pump's now */
	} else if (pid > 0 && js->has_limit) {
		add_pump(s, js, "stdout", pid, outp[0][0], files[0], false);
		add_pump(s, js, "stderr", pid, outp[1][0], files[1], false);
		outp[0][0] = outp[1][0] = files[0] = files[1] = -1; /* the pumps' now */
	}
out:
	for (int k = 0; k < 2; k++) {
		for (int e = 0; e < 2; e++)
			if (outp[k][e] >= 0)
				close(outp[k][e]);
		if (files[k] >= 0)
			close(files[k]);
	}
	if (master >= 0)
		close(master);
	if (pipefd[1] >= 0)
		close(pipefd[1]);
	if (pipefd[0] >= 0)
		close(pipefd[0]);
	if (in != s->devnull)
		close(in);
	if (pid < 0 && *input >= 0) {
		close(*input);
		*input = -1;
	}
	return pid;
}

/* Write all of BUF to FD; a failing disk loses the rest (PID 1 must not block). */
static void write_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		buf += n;
		len -= (size_t)n;
	}
}

/* Copy what the pipe holds (one read: no job starves the others); false once the
 * pump is done: EOF (every writer gone), or the limit passed (cut, announced). */
static bool pump(struct server *s, struct pump *p)
{
	static char buf[64 * 1024];
	size_t want = p->left < sizeof buf ? (size_t)p->left + 1 : sizeof buf; /* +1: the excess */
	ssize_t n = read(p->in, buf, want);
	char id[24];

	if (n < 0) /* a terminal's EIO: every slave closed */
		return errno == EAGAIN || errno == EINTR;
	if (n == 0)
		return false;
	size_t keep = (size_t)n < p->left ? (size_t)n : (size_t)p->left;
	write_all(p->out, buf, keep);
	p->left -= keep;
	if ((size_t)n == keep)
		return true;
	kill(-p->pgid, SIGKILL); /* the job, background children included */
	snprintf(id, sizeof id, "%llu", p->id);
	for (size_t i = 0; i < s->nclients; i++)
		reply(s, i, "cut", id, p->stream, NULL);
	return false;
}

static void drop_pump(struct server *s, struct pump *p)
{
	struct pump **pp = &s->pumps;

	while (*pp != p)
		pp = &(*pp)->next;
	*pp = p->next;
	close(p->in);
	close(p->out);
	free(p);
	s->npumps--;
}

static void do_spawn(struct server *s, size_t ci, char **strs, int n, int *fds, int nfds)
{
	struct job_spec js = { 0 };
	bool has_id = false;
	const char *error = parse_job(strs, n, &js, &has_id);
	char id[24] = "", err[1024], pid_text[16];
	pid_t pid = -1;
	int input = -1;

	if (has_id)
		snprintf(id, sizeof id, "%llu", js.id);
	if (!error && nfds < 3)
		error = "spawn: needs 3 fds and the cgroups to join";
	if (!error && *find_job(s, js.id, 0))
		error = "spawn: job id already running";
	if (!error && (pid = start_job(s, &js, fds, nfds, &input, err)) < 0)
		error = err;
	if (error) {
		reply(s, ci, "error", id, error, NULL);
	} else {
		struct job *j = xcalloc(1, sizeof *j);
		bool tty = js.tty.ws_row != 0;
		*j = (struct job){ s->jobs, js.id, pid, fds[2], input, tty };
		s->jobs = j;
		fds[2] = -1; /* kept by the job */
		snprintf(pid_text, sizeof pid_text, "%d", (int)pid);
		reply(s, ci, "started", id, pid_text, NULL);
	}
	free(js.env);
	free(js.argv);
	free(js.limits);
}

/*
 * "signal ID SIG [PID]": SIG to the job's process group, or to its process PID.
 * A PID must be in the job's session (the leader's setsid made it), so a job's
 * client cannot reach PID 1 or another job's processes by guessing pids.
 */
static void do_signal(struct server *s, size_t ci, char **strs, int n)
{
	unsigned long long id, sig, pid = 0;
	const char *error = NULL;
	struct job *j;
	char err[256];

	if ((n != 3 && n != 4) || !parse_uint(strs[1], ULLONG_MAX, &id) ||
	    !parse_uint(strs[2], NSIG - 1, &sig) || (n == 4 && !parse_uint(strs[3], INT_MAX, &pid)))
		error = "signal: bad request";
	else if (!(j = *find_job(s, id, 0)))
		error = "signal: no such job";
	else if (pid && (pid == 1 || getsid((pid_t)pid) != j->pid))
		error = "signal: no such process in the job";
	else if (kill(pid ? (pid_t)pid : -j->pid, (int)sig) < 0)
		error = errno == ESRCH && pid ? "signal: no such process in the job" : error_text(err, "kill");
	if (error)
		reply(s, ci, "error", n > 1 ? strs[1] : "", error, NULL);
	else
		reply(s, ci, "ok", NULL);
}

/*
 * "input ID": reply "ok" with the job's input (pipe write end or terminal master) as
 * an fd, which the daemon writes to itself, so a job that does not read makes the
 * daemon's writer wait and never PID 1. "eof ID": close PID 1's copy of a pipe.
 */
static void do_input(struct server *s, size_t ci, char **strs, int n)
{
	unsigned long long id;
	struct job *j = NULL;
	const char *error = NULL;
	bool eof = !strcmp(strs[0], "eof");

	if (n != 2 || !parse_uint(strs[1], ULLONG_MAX, &id))
		error = "input: bad request";
	else if (!(j = *find_job(s, id, 0)))
		error = "input: no such job";
	else if (j->input < 0 || (eof && j->tty))
		error = eof || j->tty ? "input: closed" : "input: the job has no stdin";
	if (error) {
		reply(s, ci, "error", n > 1 ? strs[1] : "", error, NULL);
		return;
	}
	if (eof) {
		close_input(j);
		reply(s, ci, "ok", NULL);
		return;
	}
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} control = { 0 };
	struct iovec iov = { "ok", 3 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
			     .msg_controllen = sizeof control.buf };
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &j->input, sizeof(int));
	if (sendmsg(s->clients[ci], &mh, MSG_NOSIGNAL) < 0)
		close_client(s, ci);
}

static void do_killall(struct server *s, size_t ci, char **strs, int n)
{
	unsigned long long sig;
	const char *error = NULL;
	char err[256];
	int rc = -1;

	if (n != 2 || !parse_uint(strs[1], NSIG - 1, &sig)) {
		error = "killall: bad request";
	} else {
		reap(s); /* unreaped zombies would still count for kill(-1) */
		if ((rc = kill(-1, (int)sig)) < 0 && errno != ESRCH)
			error = error_text(err, "kill");
	}
	if (error)
		reply(s, ci, "error", "", error, NULL);
	else
		reply(s, ci, rc == 0 ? "ok" : "none", NULL);
}

static void do_jobs(struct server *s, size_t ci)
{
	struct msg m = { 0 };
	char id[24];

	msg_add(&m, "jobs");
	for (struct job *j = s->jobs; j; j = j->next) {
		snprintf(id, sizeof id, "%llu", j->id);
		msg_add(&m, id);
	}
	msg_send(s, ci, &m);
	free(m.buf);
}

/* An IPv4 sockaddr for ADDR in SA; false if ADDR is not a dotted quad. */
static bool set_inet(struct sockaddr *sa, const char *addr)
{
	struct sockaddr_in *in = (struct sockaddr_in *)sa;

	memset(in, 0, sizeof *in);
	in->sin_family = AF_INET;
	return inet_pton(AF_INET, addr, &in->sin_addr) == 1;
}

/*
 * "ifconfig NAME ADDRESS PREFIXLEN GATEWAY": give the device its address, bring
 * it up and, unless GATEWAY is "-", route by it. Plain ioctls from PID 1, which
 * lives in the container's network namespace: cheaper than any helper process.
 */
static void do_ifconfig(struct server *s, size_t ci, char **strs, int n)
{
	struct ifreq ifr = { 0 };
	struct rtentry rt = { 0 };
	unsigned long long prefix;
	char err[256];
	const char *failed = NULL;
	int fd = -1;

	if (n != 5 || strlen(strs[1]) >= IFNAMSIZ || !parse_uint(strs[3], 32, &prefix)) {
		reply(s, ci, "error", "", "ifconfig: bad request", NULL);
		return;
	}
	strcpy(ifr.ifr_name, strs[1]);
	if (!set_inet(&ifr.ifr_addr, strs[2]) || (strcmp(strs[4], "-") && !set_inet(&rt.rt_gateway, strs[4]))) {
		reply(s, ci, "error", "", "ifconfig: bad address", NULL);
		return;
	}
	if ((fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)) < 0)
		failed = "socket AF_INET";
	else if (ioctl(fd, SIOCSIFADDR, &ifr) < 0)
		failed = "ioctl SIOCSIFADDR";
	if (!failed) {
		set_inet(&ifr.ifr_netmask, "0.0.0.0");
		((struct sockaddr_in *)&ifr.ifr_netmask)->sin_addr.s_addr =
			htonl(prefix ? ~0U << (32 - prefix) : 0);
		if (ioctl(fd, SIOCSIFNETMASK, &ifr) < 0)
			failed = "ioctl SIOCSIFNETMASK";
		else if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
			failed = "ioctl SIOCGIFFLAGS";
	}
	if (!failed) {
		ifr.ifr_flags |= IFF_UP;
		if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
			failed = "ioctl SIOCSIFFLAGS";
	}
	if (!failed && strcmp(strs[4], "-")) {
		set_inet(&rt.rt_dst, "0.0.0.0");
		set_inet(&rt.rt_genmask, "0.0.0.0");
		rt.rt_flags = RTF_UP | RTF_GATEWAY;
		rt.rt_dev = strs[1];
		if (ioctl(fd, SIOCADDRT, &rt) < 0)
			failed = "ioctl SIOCADDRT";
	}
	if (failed) {
		snprintf(err, sizeof err, "ifconfig %s: %s: %s", strs[1], failed, strerror(errno));
		reply(s, ci, "error", "", err, NULL);
	} else {
		reply(s, ci, "ok", NULL);
	}
	if (fd >= 0)
		close(fd);
}

static void dispatch(struct server *s, size_t ci, char **strs, int n, int *fds, int nfds)
{
	if (!strcmp(strs[0], "spawn"))
		do_spawn(s, ci, strs, n, fds, nfds);
	else if (!strcmp(strs[0], "signal"))
		do_signal(s, ci, strs, n);
	else if (!strcmp(strs[0], "input") || !strcmp(strs[0], "eof"))
		do_input(s, ci, strs, n);
	else if (!strcmp(strs[0], "killall"))
		do_killall(s, ci, strs, n);
	else if (!strcmp(strs[0], "ifconfig"))
		do_ifconfig(s, ci, strs, n);
	else if (!strcmp(strs[0], "jobs") && n == 1)
		do_jobs(s, ci);
	else if (!strcmp(strs[0], "ping") && n == 1)
		reply(s, ci, "pong", NULL);
	else
		reply(s, ci, "error", "", "unknown request", NULL);
}

/* The fds that came with a received message (SCM_RIGHTS), at most MAX: their count. */
static int received_fds(struct msghdr *mh, int *fds, int max)
{
	int n = 0;

	for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
			for (size_t k = 0; k < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int) && n < max; k++)
				memcpy(&fds[n++], CMSG_DATA(c) + k * sizeof(int), sizeof(int));
	return n;
}

/* Receive one packet from client I (sized with MSG_PEEK|MSG_TRUNC) and answer it. */
static void handle_client(struct server *s, size_t i)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
	} control;
	int fds[MAX_FDS], nfds = 0, nstr = 0;
	ssize_t n = recv(s->clients[i], NULL, 0, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);

	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) { /* EOF or error */
		close_client(s, i);
		return;
	}
	char *buf = xrealloc(NULL, (size_t)n + 1);
	struct iovec iov = { buf, (size_t)n };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
			     .msg_controllen = sizeof control.buf };
	if ((n = recvmsg(s->clients[i], &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT)) <= 0) {
		free(buf);
		if (n == 0 || (errno != EAGAIN && errno != EINTR))
			close_client(s, i);
		return;
	}
	nfds = received_fds(&mh, fds, MAX_FDS);
	buf[n] = '\0'; /* a last string without its NUL is taken as it is */
	for (char *p = buf; p < buf + n; p += strlen(p) + 1)
		nstr++;
	char **strs = xcalloc((size_t)nstr + 1, sizeof(char *));
	nstr = 0;
	for (char *p = buf; p < buf + n; p += strlen(p) + 1)
		strs[nstr++] = p;
	dispatch(s, i, strs, nstr, fds, (mh.msg_flags & MSG_CTRUNC) ? -1 : nfds);
	for (int k = 0; k < nfds; k++)
		if (fds[k] >= 0)
			close(fds[k]);
	free(strs);
	free(buf);
}

static void accept_client(struct server *s)
{
	struct timeval tv = { .tv_sec = SEND_TIMEOUT_SEC };
	int fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC);

	if (fd < 0 && (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED))
		return;
	TRY(fd, "accept4");
	TRY(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv), "setsockopt SO_SNDTIMEO");
	s->clients = xrealloc(s->clients, (s->nclients + 1) * sizeof(int));
	s->clients[s->nclients++] = fd;
}

static noreturn void serve(struct server *s)
{
	struct pollfd *pfds = NULL;
	sigset_t chld;

	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	TRY(sigprocmask(SIG_BLOCK, &chld, NULL), "sigprocmask");
	TRY(s->sig_fd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK), "signalfd");
	for (;;) {
		size_t n = s->nclients, k = 0, np = s->npumps;
		struct pump **pumps = xcalloc(np + 1, sizeof *pumps), *p = s->pumps;
		pfds = xrealloc(pfds, (n + np + 2) * sizeof *pfds);
		pfds[0] = (struct pollfd){ .fd = s->sig_fd, .events = POLLIN };
		pfds[1] = (struct pollfd){ .fd = s->listen_fd, .events = POLLIN };
		for (size_t i = 0; i < n; i++)
			pfds[i + 2] = (struct pollfd){ .fd = s->clients[i], .events = POLLIN };
		for (size_t i = 0; i < np; i++, p = p->next) {
			pumps[i] = p;
			pfds[n + 2 + i] = (struct pollfd){ .fd = p->in, .events = POLLIN };
		}
		if (poll(pfds, n + np + 2, -1) < 0 && errno != EINTR)
			die("poll");
		/* Output before exits: a job's last bytes are in its file when its exit is told. */
		for (size_t i = 0; i < np; i++)
			if (pfds[n + 2 + i].revents && !pump(s, pumps[i]))
				drop_pump(s, pumps[i]);
		free(pumps);
		if (pfds[0].revents)
			reap(s);
		for (size_t i = 0; i < n; i++)
			if (pfds[i + 2].revents && s->clients[i] >= 0)
				handle_client(s, i);
		if (pfds[1].revents & POLLIN)
			accept_client(s);
		for (size_t i = 0; i < s->nclients; i++)
			if (s->clients[i] >= 0)
				s->clients[k++] = s->clients[i];
		s->nclients = k;
	}
}

static noreturn void init_main(struct setup *setup, struct spec *sp, int ready_fd, bool control)
{
	struct server s = { .sig_fd = -1 };
	struct sigaction ign = { .sa_handler = SIG_IGN };

	err_fd = ready_fd;
	/* Its own cgroup namespace, now that it is in every cgroup of the container (the
	 * v2 one by its clone): they are its root, and a job that mounts a cgroup
	 * hierarchy (in a user namespace of its own) finds nothing above them. */
	TRY(unshare(CLONE_NEWCGROUP), "unshare CLONE_NEWCGROUP");
	for (size_t i = 0; i < ARRAY_LEN(init_ignored); i++)
		TRY(sigaction(init_ignored[i], &ign, NULL), "sigaction %d", init_ignored[i]);
	TRY(s.devnull = open("/dev/null", O_RDWR | O_CLOEXEC), "open /dev/null");
	finish_setup(setup, sp);
	s.listen_fd = setup->listen_fd;
	umask(022);
	for (size_t i = 0; i < sp->n; i++)
		free(sp->d[i].line);
	free(sp->d);
	malloc_trim(0); /* the spec's memory goes back: PID 1 lives as long as the container */
	/* The container's filter, once no set-up call it may forbid is left. Loading it
	 * without no_new_privs takes CAP_SYS_ADMIN: PID 1 is the user namespace's root. */
	load_filter(&container_filter);
	/* Receive buffers (up to a few hundred KiB) are mmapped, so freeing returns them. */
	mallopt(M_MMAP_THRESHOLD, 64 * 1024);
	mallopt(M_TRIM_THRESHOLD, 128 * 1024);
	for (int fd = 0; fd < 3; fd++) /* the launcher's caller waits for EOF on them */
		TRY(dup2(s.devnull, fd), "dup2 /dev/null");
	if (control) { /* served like an accepted client, after "ready" */
		static const char ready[] = "ready";
		struct timeval tv = { .tv_sec = SEND_TIMEOUT_SEC };

		TRY(fcntl(CONTROL_FD, F_SETFD, FD_CLOEXEC), "fcntl control socket");
		TRY(setsockopt(CONTROL_FD, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv), "setsockopt SO_SNDTIMEO");
		TRY(send(CONTROL_FD, ready, sizeof ready, MSG_NOSIGNAL), "send ready");
		s.clients = xrealloc(NULL, sizeof(int));
		s.clients[s.nclients++] = CONTROL_FD;
	}
	if (write(ready_fd, "ok\n", 3) != 3)
		die("write ready");
	close(ready_fd);
	err_fd = STDERR_FILENO; /* now /dev/null */
	serve(&s);
}

/* ---- launcher --------------------------------------------------------- */

/* One line of the spec from stdin (without its newline), or NULL at EOF. */
static char *next_line(FILE *in)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t n = getline(&line, &cap, in);

	if (n < 0) {
		if (ferror(in))
			die("read launch spec");
		free(line);
		return NULL;
	}
	if (n > 0 && line[n - 1] == '\n')
		line[n - 1] = '\0';
	return line;
}

static int launch(void)
{
	struct spec sp = { 0 };
	struct setup setup = { .r = { .fd = -1 }, .host = { .path = "/", .fd = -1 }, .listen_fd = -1 };
	int ready[2], wstatus, fd, c, lineno = 0;
	char buf[1024], text[32], *line;
	bool control;
	cpu_set_t cpus;
	FILE *in;
	pid_t pid;

	/* The namespaces first, before the spec: the daemon starts launchers ahead
	 * and finishes its other preparations while they are made (a network
	 * namespace takes half a millisecond). The control socket (fd 3, if the
	 * daemon passed one) tells it they exist. */
	TRY(close_range(CONTROL_FD + 1, ~0U, 0), "close_range");
	make_namespaces();
	control = report_namespace();
	/* Directives are applied as they arrive (the daemon sends the set-up while
	 * it makes the cgroups, then the cgroups): here up to the proc mount, which
	 * must be made from inside the new pid namespace, and from there on by PID 1;
	 * cgroup lines here, always, so PID 1 starts in the cgroups. */
	/* A copy of stdin, so fclose (which frees the buffer) leaves fds 0-2 as they are. */
	if ((fd = fcntl(STDIN_FILENO, F_DUPFD_CLOEXEC, 3)) < 0 || !(in = fdopen(fd, "r")))
		die("fdopen stdin");
	/* The mount namespace only once the spec comes: a copy of the host's mounts
	 * as they are when the container is set up, not when the launcher started. */
	if ((c = fgetc(in)) != EOF)
		ungetc(c, in);
	TRY(unshare(CLONE_NEWNS), "unshare CLONE_NEWNS");
	/* Nothing mounted from here on may propagate to the host. */
	TRY(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), "mount --make-rprivate /");
	umask(0);
	for (;;) {
		struct directive d;

		/* Only a whole spec launches: a daemon that died half-way leaves no container. */
		if (!(line = next_line(in)))
			die_msg("launch spec: no end line");
		lineno++;
		if (!*line) {
			free(line);
			continue;
		}
		parse_directive(&sp, &d, line, lineno);
		if (d.kind == D_END) {
			free(line);
			break;
		}
		if (d.kind == D_MOUNT && !strcmp(d.f[0], "proc"))
			sp.late = true;
		if ((d.done = !sp.late || d.kind == D_CGROUP))
			apply(&setup, &d);
		if (sp.n == sp.cap)
			sp.d = xrealloc(sp.d, (sp.cap = sp.cap ? sp.cap * 2 : 16) * sizeof *sp.d);
		sp.d[sp.n++] = d;
	}
	fclose(in); /* and its buffer: PID 1 would keep a copy */
	if (!sp.root || !sp.socket)
		die_msg("launch spec: no %s", sp.root ? "socket" : "root");
	/* The daemon started the launcher off its own CPU (see launcher.py): the init
	 * and its jobs may run on every CPU of their cpuset again. */
	CPU_ZERO(&cpus);
	for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
		CPU_SET(cpu, &cpus);
	TRY(sched_setaffinity(0, sizeof cpus, &cpus), "sched_setaffinity");
	TRY(pipe2(ready, O_CLOEXEC), "pipe2");
	TRY(unshare(CLONE_NEWPID), "unshare CLONE_NEWPID"); /* PID 1 is its first process */
	TRY(pid = fork_into_cgroup(), "fork");
	if (pid == 0) {
		close(ready[0]);
		init_main(&setup, &sp, ready[1], control);
	}
	close(ready[1]);
	if (control) { /* PID 1 keeps the control socket: the daemon's first connection */
		int len = snprintf(text, sizeof text, "init%c%d", '\0', (int)pid);
		tell_daemon(text, (size_t)len + 1, NULL, 0);
		/* Kept open until the launcher exits: the daemon reads the launcher's error once
		 * the socket ends, so it must not end when a failed init closes its copy. */
	}
	if (read_report(ready[0], buf, sizeof buf, -1) == 3 && !strcmp(buf, "ok\n")) {
		snprintf(text, sizeof text, "%d\n", (int)pid);
		TRY(write(STDOUT_FILENO, text, strlen(text)), "write stdout");
		return 0;
	}
	TRY(waitpid(pid, &wstatus, 0), "waitpid");
	if (*buf)
		die_msg("%s", buf);
	die_msg("init exited during set-up (wait status %d)", wstatus);
}

/* ---- zygote ------------------------------------------------------------ */

static void on_sigchld(int sig)
{
	(void)sig; /* only to interrupt recvmsg: the loop reaps */
}

/* `corral-init zygote ROOM`: on fd 3 (a SOCK_SEQPACKET socket), requests
 * "launch" with three fds: the spec (stdin), stderr and the control socket of
 * one launcher. It forks a launcher for each, as if `corral-init launch` had
 * been exec'd with those fds (and the zygote's CPU affinity, which the daemon
 * keeps off its own CPU). ROOM is a long argument whose space holds the label
 * the spec gives. Exits at EOF (the daemon is gone). It reaps its launchers
 * (so their CPU time shows in its own children's, as an exec'd launcher's did
 * in the daemon's). */
static noreturn void zygote(void)
{
	struct sigaction chld = { .sa_handler = on_sigchld }, dfl = { .sa_handler = SIG_DFL };

	/* Launchers, inits and jobs start from default dispositions (see reset_signals). */
	for (int sig = 1; sig < NSIG; sig++)
		if (sig != SIGKILL && sig != SIGSTOP && sigaction(sig, &dfl, NULL) < 0 &&
		    errno != EINVAL) /* EINVAL: signals reserved by glibc */
			die("sigaction %d", sig);
	TRY(sigaction(SIGCHLD, &chld, NULL), "sigaction SIGCHLD"); /* no SA_RESTART */
	for (;;) {
		union {
			struct cmsghdr align;
			char buf[CMSG_SPACE(sizeof(int) * 3)];
		} control;
		char buf[16];
		int fds[3], nfds = 0;
		struct iovec iov = { buf, sizeof buf - 1 };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
				     .msg_controllen = sizeof control.buf };
		ssize_t n;

		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		if ((n = recvmsg(CONTROL_FD, &mh, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			exit(n == 0 ? 0 : 1);
		nfds = received_fds(&mh, fds, 3);
		buf[n] = '\0';
		if (nfds == 3 && !strcmp(buf, "launch")) {
			pid_t pid = fork();

			if (pid == 0) {
				TRY(sigaction(SIGCHLD, &dfl, NULL), "sigaction SIGCHLD");
				if (dup2(fds[0], STDIN_FILENO) < 0 || dup2(fds[1], STDERR_FILENO) < 0 ||
				    dup2(fds[2], CONTROL_FD) < 0)
					die("dup2");
				TRY(close_range(CONTROL_FD + 1, ~0U, 0), "close_range");
				set_label("");
				exit(launch());
			}
			if (pid < 0)
				dprintf(fds[1], "corral-init: fork: %s\n", strerror(errno));
		}
		for (int k = 0; k < nfds; k++)
			close(fds[k]);
	}
}

/* ---- sealed copy ------------------------------------------------------ */

#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U /* linux/memfd.h, 6.3: executable even under vm.memfd_noexec=1 */
#endif

/*
 * Run from a sealed in-memory copy of this binary, as runc does (CVE-2019-5736):
 * every launcher, init and job process before its exec has this copy as its
 * /proc/PID/exe, never the host's corral-init, which a privileged job could
 * otherwise open through /proc and rewrite once nothing runs it. The copy can be
 * neither written nor resized (F_SEAL_*). Made once per zygote, that is once per
 * daemon start; a launcher spawned without a zygote makes its own.
 */
static void run_sealed_copy(char **argv)
{
	struct stat st;
	int exe, mem;

	TRY(exe = open("/proc/self/exe", O_RDONLY | O_CLOEXEC), "open /proc/self/exe");
	if (fcntl(exe, F_GET_SEALS) >= 0) { /* a memfd: the copy already */
		close(exe);
		/* Named as before in ps and /proc/PID/comm, not "memfd:corral-in". */
		TRY(prctl(PR_SET_NAME, "corral-init", 0, 0, 0), "prctl PR_SET_NAME");
		return;
	}
	TRY(fstat(exe, &st), "fstat /proc/self/exe");
	mem = memfd_create("corral-init", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC);
	if (mem < 0 && errno == EINVAL) /* a kernel before 6.3 */
		mem = memfd_create("corral-init", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	TRY(mem, "memfd_create");
	for (off_t left = st.st_size; left > 0;) {
		ssize_t n = sendfile(mem, exe, NULL, (size_t)left);
		if (n <= 0)
			die_msg("copy /proc/self/exe to a memfd: %s", n < 0 ? strerror(errno) : "short file");
		left -= n;
	}
	TRY(fcntl(mem, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE),
	    "fcntl F_ADD_SEALS");
	close(exe);
	fexecve(mem, argv, environ);
	die("fexecve the sealed copy");
}

/* Arguments after "launch" are ignored: PID 1 keeps them in its cmdline, as a
 * label (which a `label` directive replaces). */
int main(int argc, char **argv)
{
	if (argc >= 2 && (!strcmp(argv[1], "launch") || !strcmp(argv[1], "zygote")))
		run_sealed_copy(argv);
	if (argc >= 2) {
		args_start = argv[1];
		args_end = argv[argc - 1] + strlen(argv[argc - 1]) + 1;
	}
	if (argc >= 2 && !strcmp(argv[1], "launch"))
		return launch();
	if (argc >= 2 && !strcmp(argv[1], "probe-ids"))
		return probe_ids(argc, argv);
	if (argc == 3 && !strcmp(argv[1], "zygote"))
		zygote();
	die_msg("usage: corral-init launch [LABEL...] < SPEC | corral-init zygote ROOM | "
		"corral-init probe-ids FIRST PATH...");
}
