/*
 * corral: the command's front, in C (docs/cli.md, "Which path runs a command").
 *
 * A `corral run --rm -- /bin/true` spends most of its time starting Python
 * (the interpreter, argparse, the client) rather than in the daemon. This
 * program does the two one-shot commands on their common path itself, on the
 * daemon's line protocol (docs/protocol.md), and becomes the Python CLI
 * (execv of `corral-py ARGS...` from its own directory, or $CORRAL_PYTHON_CLI)
 * for everything else, before it has asked the daemon anything:
 *
 *   corral [-s SOCKET] run [--rm] [--name N] [--rootfs DIR] [-m SIZE] [--cpus N]
 *       [--cpuset-cpus C] [--pids-limit N] [-e K=V]... [-u U] [-w DIR]
 *       [--privileged] [--timeout S] -- CMD ARGS...
 *   corral [-s SOCKET] contain -chroot DIR [--overlay] [--memory-limit SIZE]
 *       [--cpu-core-ids L] [--network-address CIDR [--bridge B] [--gateway G]]
 *       [--user U] -- PROG ARGS...
 *
 * Not here (Python's): any other command or option, `-it`, an option spelled
 * otherwise (`-eK=V`, an abbreviation), a value it does not read as plainly
 * valid (Python then says what is wrong, in its words), argv bytes that are
 * not UTF-8, `contain` on a terminal, CORRAL_NO_FRONT set.
 *
 * What it does is what supervisor/cli/run.py and oneshot.py do, with the same
 * create and spawn, output, messages and exit status: the output
 * streamed (raw) on a second connection as it comes, INT TERM HUP QUIT USR1
 * USR2 passed to the job (blocked from the start, so one that comes before the
 * job exists waits for it), the container destroyed (run --rm, contain) or
 * stopped (run) at the end on every path. contain's status comes with its
 * stream (`ended`), not from a link that would send all the output again.
 * `--rm` and `contain` create with
 * grace_time 0: killed, we leave nothing either (the daemon destroys the
 * container once our connections are gone). contain copies a stdin that is
 * not /dev/null to the job from a child process with a connection of its own
 * (a write waits until the job reads; nothing else must wait behind it).
 *
 * Build: gcc -Os -static -Wall -Wextra -Werror (python -m executors.build --front).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdnoreturn.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define PYTHON_CLI "corral-py" /* the Python CLI's launcher, beside this program */
#define DEFAULT_SOCKET "/run/corral/corral.sock"
#define MAX_ITEMS 256 /* -e options; more: Python's */
#define MAX_BUFFER (64 << 20) /* a reply line longer than this: the daemon misbehaves */

extern char **environ;
static char **original_argv;

/* ---- the way out: Python, or an exit status ------------------------------ */

/* Become the Python CLI with our argv: nothing was asked of the daemon yet. */
static noreturn void python(void)
{
	char self[4096], *path = getenv("CORRAL_PYTHON_CLI"), *slash;
	ssize_t n;

	if (!path || !*path) {
		n = readlink("/proc/self/exe", self, sizeof self - sizeof PYTHON_CLI - 1);
		if (n <= 0 || !(slash = memrchr(self, '/', (size_t)n))) {
			fprintf(stderr, "corral: cannot find %s: /proc/self/exe\n", PYTHON_CLI);
			exit(1);
		}
		memcpy(slash + 1, PYTHON_CLI, sizeof PYTHON_CLI);
		path = self;
	}
	original_argv[0] = path;
	execv(path, original_argv);
	fprintf(stderr, "corral: cannot run the Python CLI %s: %s\n", path, strerror(errno));
	exit(1);
}

static void say(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("corral: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* ---- a growing buffer, and JSON written into it -------------------------- */

struct buf {
	char *s;
	size_t len, cap;
};

static void put(struct buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		b->cap = (b->len + n + 1) * 2;
		if (!(b->s = realloc(b->s, b->cap))) {
			say("out of memory");
			exit(1);
		}
	}
	memcpy(b->s + b->len, s, n);
	b->len += n;
	b->s[b->len] = 0;
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

/* A JSON string. The argv is valid UTF-8 (checked first), so only quotes,
 * backslashes and control characters need escapes. */
static void put_str(struct buf *b, const char *s)
{
	char esc[8];

	put(b, "\"", 1);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\') {
			esc[0] = '\\', esc[1] = *s;
			put(b, esc, 2);
		} else if ((unsigned char)*s < 0x20) {
			snprintf(esc, sizeof esc, "\\u%04x", (unsigned char)*s);
			put(b, esc, 6);
		} else {
			put(b, s, 1);
		}
	}
	put(b, "\"", 1);
}

/* shlex.quote: as it is when made only of [A-Za-z0-9_@%+=:,./-], else in
 * single quotes with each ' as '"'"'. */
static void put_quoted(struct buf *b, const char *s)
{
	const char *p;
	bool safe = *s != 0;

	for (p = s; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		      strchr("_@%+=:,./-", *p)))
			safe = false;
	if (safe) {
		puts_(b, s);
		return;
	}
	put(b, "'", 1);
	for (p = s; *p; p++)
		if (*p == '\'')
			puts_(b, "'\"'\"'");
		else
			put(b, p, 1);
	put(b, "'", 1);
}

/* shlex.join(argv) */
static void put_joined(struct buf *b, char **argv)
{
	for (int i = 0; argv[i]; i++) {
		if (i)
			put(b, " ", 1);
		put_quoted(b, argv[i]);
	}
}

/* ---- reading what the daemon sends --------------------------------------- */

struct cur {
	const char *p, *end;
};

static void ws(struct cur *c)
{
	while (c->p < c->end && strchr(" \t\r\n", *c->p))
		c->p++;
}

static bool eat(struct cur *c, char ch)
{
	ws(c);
	if (c->p < c->end && *c->p == ch) {
		c->p++;
		return true;
	}
	return false;
}

static int hex4(const char *p, const char *end)
{
	int v = 0;

	if (end - p < 4)
		return -1;
	for (int i = 0; i < 4; i++) {
		char ch = p[i];
		v = v * 16 + (ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1000000);
	}
	return v < 0 ? -1 : v;
}

static void put_utf8(struct buf *b, unsigned cp)
{
	char u[4];

	if (cp < 0x80) {
		u[0] = (char)cp;
		put(b, u, 1);
	} else if (cp < 0x800) {
		u[0] = (char)(0xc0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3f));
		put(b, u, 2);
	} else if (cp < 0x10000) {
		u[0] = (char)(0xe0 | cp >> 12), u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		u[2] = (char)(0x80 | (cp & 0x3f));
		put(b, u, 3);
	} else {
		u[0] = (char)(0xf0 | cp >> 18), u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
		u[2] = (char)(0x80 | ((cp >> 6) & 0x3f)), u[3] = (char)(0x80 | (cp & 0x3f));
		put(b, u, 4);
	}
}

/* A JSON string into OUT as UTF-8 (OUT may be NULL: skipped). A lone
 * surrogate becomes the text \udcXX, as Python prints it to stderr. */
static bool get_str(struct cur *c, struct buf *out)
{
	char tmp[16];

	if (!eat(c, '"'))
		return false;
	while (c->p < c->end && *c->p != '"') {
		if (*c->p != '\\') {
			if (out)
				put(out, c->p, 1);
			c->p++;
			continue;
		}
		if (++c->p >= c->end)
			return false;
		char e = *c->p++;
		const char *plain = strchr("\"\\/bfnrt", e);
		if (plain) {
			if (out)
				put(out, &"\"\\/\b\f\n\r\t"[plain - "\"\\/bfnrt"], 1);
			continue;
		}
		if (e != 'u')
			return false;
		int cp = hex4(c->p, c->end), lo;
		if (cp < 0)
			return false;
		c->p += 4;
		if (cp >= 0xd800 && cp < 0xdc00 && c->end - c->p >= 6 && c->p[0] == '\\' && c->p[1] == 'u' &&
		    (lo = hex4(c->p + 2, c->end)) >= 0xdc00 && lo < 0xe000) {
			cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
			c->p += 6;
		} else if (cp >= 0xd800 && cp < 0xe000) {
			snprintf(tmp, sizeof tmp, "\\u%04x", (unsigned)cp);
			if (out)
				puts_(out, tmp);
			continue;
		}
		if (out)
			put_utf8(out, (unsigned)cp);
	}
	return eat(c, '"');
}

/* Skip one JSON value. */
static bool skip(struct cur *c, int depth)
{
	ws(c);
	if (c->p >= c->end || depth > 64)
		return false;
	if (*c->p == '"')
		return get_str(c, NULL);
	if (*c->p == '{' || *c->p == '[') {
		char close = *c->p == '{' ? '}' : ']';
		c->p++;
		if (eat(c, close))
			return true;
		do {
			if (close == '}' && (!get_str(c, NULL) || !eat(c, ':')))
				return false;
			if (!skip(c, depth + 1))
				return false;
		} while (eat(c, ','));
		return eat(c, close);
	}
	while (c->p < c->end && !strchr(",]} \t\r\n", *c->p))
		c->p++; /* a number, true, false, null */
	return true;
}

/* In the object at C, the value of KEY: *VAL starts at it. */
static bool member(struct cur c, const char *key, struct cur *val)
{
	struct buf name = { 0 };
	bool found = false;

	if (!eat(&c, '{') || eat(&c, '}'))
		return false;
	do {
		name.len = 0;
		if (!get_str(&c, &name) || !eat(&c, ':'))
			break;
		ws(&c);
		if (name.s && strcmp(name.s, key) == 0) {
			*val = c;
			found = true;
			break;
		}
		if (!skip(&c, 0))
			break;
	} while (eat(&c, ','));
	free(name.s);
	return found;
}

/* An integer at C; false for null or anything else. */
static bool get_int(struct cur c, long long *v)
{
	char *end;

	ws(&c);
	if (c.p >= c.end || !(*c.p == '-' || (*c.p >= '0' && *c.p <= '9')))
		return false;
	*v = strtoll(c.p, &end, 10);
	return end <= c.end && (end == c.end || !strchr(".eE", *end));
}

static bool is_word(struct cur c, const char *word)
{
	ws(&c);
	return (size_t)(c.end - c.p) >= strlen(word) && strncmp(c.p, word, strlen(word)) == 0;
}

/* ---- connections --------------------------------------------------------- */

struct conn {
	int fd;
	struct buf in; /* received, not yet used: in.s[start..len) */
	size_t start;
};

static const char *socket_path;

/* Connect; the errno when we cannot. */
static int conn_open(struct conn *c)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };

	memset(c, 0, sizeof *c);
	c->fd = -1;
	if (strlen(socket_path) >= sizeof addr.sun_path)
		return ENAMETOOLONG;
	strcpy(addr.sun_path, socket_path);
	if ((c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		return errno;
	if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
		int err = errno;
		close(c->fd);
		c->fd = -1;
		return err;
	}
	return 0;
}

/* Write all of S to FD (the socket, or our stdout or stderr); false when it
 * failed: the daemon went, or our reader did (EPIPE: as Python, exit 141). */
static bool write_all(int fd, const char *s, size_t n)
{
	while (n > 0) {
		ssize_t w = fd > 2 ? send(fd, s, n, MSG_NOSIGNAL) : write(fd, s, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return false;
		s += w, n -= (size_t)w;
	}
	return true;
}

/* Receive more into C's buffer; false once the daemon closed (or failed). */
static bool fill(struct conn *c)
{
	char chunk[65536];
	ssize_t n;

	if (c->start > 0) { /* what was used goes: a long stream does not grow it */
		memmove(c->in.s, c->in.s + c->start, c->in.len - c->start);
		c->in.len -= c->start;
		c->start = 0;
	}
	if (c->in.len - c->start > MAX_BUFFER)
		return false;
	do
		n = recv(c->fd, chunk, sizeof chunk, 0);
	while (n < 0 && errno == EINTR);
	if (n <= 0)
		return false;
	put(&c->in, chunk, (size_t)n);
	return true;
}

/* A whole line in the buffer (without its newline), or false: receive more. */
static bool have_line(struct conn *c, struct cur *line)
{
	char *s = c->in.s + c->start, *nl = c->in.len > c->start ? memchr(s, '\n', c->in.len - c->start) : NULL;

	if (!nl)
		return false;
	line->p = s, line->end = nl;
	c->start += (size_t)(nl - s) + 1;
	return true;
}

static bool next_line(struct conn *c, struct cur *line)
{
	while (!have_line(c, line))
		if (!fill(c))
			return false;
	return true;
}

/* ---- requests ------------------------------------------------------------ */

static struct conn main_conn;
static char handle[128];
static long long job_id = -1;

static noreturn void daemon_closed(void)
{
	say("the daemon closed the connection (did it stop?)");
	exit(1);
}

/* An error reply's code and message, as Python's CorralError has them. */
struct error {
	struct buf code, message;
};

/* Send REQ on C and read its reply: REPLY_OK with *PAYLOAD at the payload,
 * REPLY_ERROR with *ERR, or REPLY_CLOSED (the daemon closed the connection). */
enum { REPLY_OK, REPLY_ERROR, REPLY_CLOSED };

static int call(struct conn *c, struct buf *req, struct cur *payload, struct error *err)
{
	struct cur line, v;

	put(req, "\n", 1);
	if (!write_all(c->fd, req->s, req->len) || !next_line(c, &line))
		return REPLY_CLOSED;
	if (!member(line, "payload", payload))
		return REPLY_CLOSED;
	if (member(line, "type", &v) && is_word(v, "\"error\"")) {
		struct cur field;
		err->code.len = err->message.len = 0;
		if (member(*payload, "code", &field))
			get_str(&field, &err->code);
		if (member(*payload, "message", &field))
			get_str(&field, &err->message);
		put(&err->code, "", 0);
		put(&err->message, "", 0);
		return REPLY_ERROR;
	}
	return REPLY_OK;
}

/* main() of supervisor/cli/__init__.py on a CorralError: the code, the message, a hint. */
static void say_error(const struct error *err)
{
	const char *hint = "";

	if (strcmp(err->code.s, "unknown_handle") == 0)
		hint = " (`corral ps -a` lists the containers)";
	else if (strcmp(err->code.s, "unknown_job") == 0)
		hint = " (it was never started, or its result was taken by link)";
	else if (strcmp(err->code.s, "internal") == 0)
		hint = " (a bug of Corral: its log, /var/log/corral/corrald.log, tells more)";
	say("%s: %s%s", err->code.s, err->message.s, hint);
}

/* ---- the command line ---------------------------------------------------- */

static bool valid_utf8(const unsigned char *s)
{
	while (*s) {
		int n = *s < 0x80 ? 0 : (*s & 0xe0) == 0xc0 && *s >= 0xc2 ? 1 : (*s & 0xf0) == 0xe0 ? 2 : (*s & 0xf8) == 0xf0 && *s <= 0xf4 ? 3 : -1;
		if (n < 0)
			return false;
		unsigned cp = n == 0 ? *s : *s & (0x3f >> n);
		for (int i = 1; i <= n; i++) {
			if ((s[i] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (s[i] & 0x3f);
		}
		/* no overlong form, no surrogate, nothing past U+10FFFF */
		if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp < 0xe000))
			return false;
		s += n + 1;
	}
	return true;
}

static bool digits(const char *s, size_t min, size_t max)
{
	size_t n = strspn(s, "0123456789");
	return n >= min && n <= max;
}

/* Python's int(TEXT) for plain digits, as JSON; else Python decides. */
static void put_int_text(struct buf *b, const char *text)
{
	if (!digits(text, 1, 15) || text[strspn(text, "0123456789")])
		python();
	while (text[0] == '0' && text[1])
		text++;
	puts_(b, text);
}

/* repr(float(TEXT)) for a plain decimal (DIGITS[.DIGITS], 15 digits at most,
 * 0 or >= 0.0001: where repr writes it as a decimal); else Python decides. */
static void put_float_text(struct buf *b, const char *text)
{
	size_t whole = strspn(text, "0123456789"), frac = 0;
	const char *f = "";

	if (whole < 1)
		python();
	if (text[whole] == '.') {
		f = text + whole + 1;
		frac = strspn(f, "0123456789");
		if (frac < 1 || f[frac])
			python();
	} else if (text[whole]) {
		python();
	}
	if (whole + frac > 15)
		python();
	while (whole > 1 && *text == '0')
		text++, whole--;
	while (frac > 0 && f[frac - 1] == '0')
		frac--;
	if (whole == 1 && *text == '0' && frac > 0 && strspn(f, "0") >= 4)
		python(); /* below 0.0001: repr writes 1e-05 */
	put(b, text, whole);
	put(b, ".", 1);
	if (frac)
		put(b, f, frac);
	else
		put(b, "0", 1);
}

/* parse_size (supervisor/cli/command.py) of a plain size: DIGITS[.DIGITS]
 * [kmgt][i][b], any case; else Python decides (and names the mistake). */
static void put_size(struct buf *b, const char *text)
{
	char lowered[64], *end, *u;
	double number, unit = 1;
	size_t n = strlen(text);

	if (n == 0 || n >= sizeof lowered)
		python();
	for (size_t i = 0; i <= n; i++)
		lowered[i] = (char)(text[i] >= 'A' && text[i] <= 'Z' ? text[i] + 32 : text[i]);
	if (n >= 2 && strcmp(lowered + n - 2, "ib") == 0)
		lowered[n -= 2] = 0;
	else if (n >= 1 && lowered[n - 1] == 'b')
		lowered[n -= 1] = 0;
	if (!digits(lowered, 1, 18))
		python();
	u = lowered + strspn(lowered, "0123456789");
	if (*u == '.' && digits(u + 1, 1, 18))
		u += 1 + strspn(u + 1, "0123456789");
	if (*u && (u[1] || !strchr("kmgt", *u)))
		python();
	for (const char *p = "kmgt"; *u && *p; p++) {
		unit *= 1024;
		if (*p == *u)
			break;
	}
	*u = 0;
	number = strtod(lowered, &end) * unit; /* int(number * unit), as Python */
	if (number >= 9e18)
		python();
	char out[32];
	snprintf(out, sizeof out, "%lld", (long long)number);
	puts_(b, out);
}

/* os.path.abspath: made absolute from the working directory and normalized
 * (no symlink resolved). A path starting with exactly // is Python's. */
static char *abspath(const char *path)
{
	struct buf joined = { 0 }, out = { 0 };
	char cwd[4096], *save, *part;
	size_t *ends = NULL, depth = 0;

	if (path[0] == '/' && path[1] == '/' && path[2] != '/')
		python();
	if (path[0] != '/') {
		if (!getcwd(cwd, sizeof cwd) || cwd[0] != '/' || cwd[1] == '/')
			python();
		puts_(&joined, cwd);
		put(&joined, "/", 1);
	}
	puts_(&joined, path);
	ends = calloc(joined.len + 1, sizeof *ends);
	put(&out, "", 0);
	for (part = strtok_r(joined.s, "/", &save); part; part = strtok_r(NULL, "/", &save)) {
		if (strcmp(part, ".") == 0)
			continue;
		if (strcmp(part, "..") == 0) {
			if (depth > 0)
				out.len = depth > 1 ? ends[--depth - 1] : (depth = 0);
			out.s[out.len] = 0;
			continue;
		}
		put(&out, "/", 1);
		puts_(&out, part);
		ends[depth++] = out.len;
	}
	if (out.len == 0)
		put(&out, "/", 1);
	free(joined.s), free(ends);
	return out.s;
}

/* The value of option ARGV[*I] (`--opt VALUE` or `--opt=VALUE`), if ARGV[*I]
 * is one of the names; a value that is empty or looks like an option: Python. */
static const char *value_of(char **argv, int *i, const char *short_name, const char *long_name)
{
	const char *arg = argv[*i], *value = NULL;
	size_t n = strlen(long_name);

	if ((short_name && strcmp(arg, short_name) == 0) || strcmp(arg, long_name) == 0)
		value = argv[++*i];
	else if (strncmp(arg, long_name, n) == 0 && arg[n] == '=')
		value = arg + n + 1;
	else
		return NULL;
	if (!value || !*value || *value == '-')
		python();
	return value;
}

#define OPTION(s, l) (v = value_of(argv, &i, s, l))

/* ---- the job: output, signals, stdin ------------------------------------- */

struct ending {
	long long status; /* -1: null */
	struct buf killed_by;
	long long signal; /* -1: null */
};

enum { ENDED, FAILED, READER_GONE }; /* how following a job came to its end */

/* Stream the job's output (raw) on a connection of its own to ours, passing
 * on the signals that come meanwhile; ENDED with its final payload in *END,
 * FAILED with the stream's error reply in *ERR, or READER_GONE. */
static int follow(int sigfd, bool say_cut, struct ending *end, struct error *err)
{
	struct conn c;
	struct cur line, payload, v;
	size_t raw = 0; /* bytes of a raw chunk still to copy */
	int to = 1;

	if (conn_open(&c) != 0)
		daemon_closed();
	struct buf req = { 0 };
	puts_(&req, "[\"stream\",");
	put_str(&req, handle);
	char tail[96];
	snprintf(tail, sizeof tail, ",%lld,{\"ended\":true,\"encoding\":\"raw\"}]\n", job_id);
	puts_(&req, tail);
	if (!write_all(c.fd, req.s, req.len))
		daemon_closed();
	for (;;) {
		/* What the buffer holds: a raw chunk's bytes, or whole lines. */
		for (;;) {
			if (raw > 0) {
				size_t n = c.in.len - c.start < raw ? c.in.len - c.start : raw;
				if (n == 0)
					break;
				if (!write_all(to, c.in.s + c.start, n))
					return READER_GONE;
				c.start += n, raw -= n;
				continue;
			}
			if (!have_line(&c, &line))
				break;
			struct cur item = line;
			struct buf name = { 0 };
			long long size;
			if (!eat(&item, '[')) { /* the final reply */
				if (!member(line, "payload", &payload))
					daemon_closed();
				if (member(line, "type", &v) && is_word(v, "\"error\"")) {
					struct cur f;
					if (member(payload, "code", &f))
						get_str(&f, &err->code);
					if (member(payload, "message", &f))
						get_str(&f, &err->message);
					put(&err->code, "", 0), put(&err->message, "", 0);
					return FAILED;
				}
				end->status = member(payload, "status", &v) && get_int(v, &size) ? size : -1;
				if (member(payload, "ended", &v)) {
					struct cur f;
					if (member(v, "killed_by", &f) && !is_word(f, "null"))
						get_str(&f, &end->killed_by);
					end->signal = member(v, "signal", &f) && get_int(f, &size) ? size : -1;
				}
				return ENDED;
			}
			if (!get_str(&item, &name) || !eat(&item, ','))
				daemon_closed();
			if (strcmp(name.s, "cut") == 0) {
				struct buf what = { 0 };
				get_str(&item, &what);
				if (say_cut)
					say("the job's %s was cut at the output limit", what.s ? what.s : "");
				free(what.s);
			} else {
				to = strcmp(name.s, "stdout") == 0 ? 1 : 2;
				if (get_int(item, &size) && size >= 0) {
					raw = (size_t)size;
				} else {
					struct buf text = { 0 };
					if (!get_str(&item, &text))
						daemon_closed();
					if (text.len && !write_all(to, text.s, text.len))
						return READER_GONE;
					free(text.s);
				}
			}
			free(name.s);
		}
		/* Wait for more output, or a signal to pass on. */
		struct pollfd pfd[2] = { { .fd = c.fd, .events = POLLIN }, { .fd = sigfd, .events = POLLIN } };
		if (poll(pfd, 2, -1) < 0)
			continue;
		if (pfd[1].revents & POLLIN) {
			struct signalfd_siginfo si;
			if (read(sigfd, &si, sizeof si) == sizeof si) {
				char text[200];
				struct buf r = { 0 };
				puts_(&r, "[\"signal\",");
				put_str(&r, handle);
				snprintf(text, sizeof text, ",%lld,%u,{}]", job_id, si.ssi_signo);
				puts_(&r, text);
				struct cur p;
				struct error e = { 0 };
				if (call(&main_conn, &r, &p, &e) == REPLY_CLOSED)
					daemon_closed(); /* else sent, or the job has just ended */
				free(r.s), free(e.code.s), free(e.message.s);
			}
		}
		if (pfd[0].revents && !fill(&c))
			daemon_closed();
	}
}

/* Whether stdin is /dev/null or closed: nothing to pass on (oneshot._null_stdin). */
static bool null_stdin(void)
{
	struct stat ours, null;

	if (fstat(0, &ours) < 0 || stat("/dev/null", &null) < 0)
		return true;
	return ours.st_rdev == null.st_rdev && ours.st_ino == null.st_ino && ours.st_dev == null.st_dev;
}

/* A child copying our stdin to the job's (base64), then EOF; it dies with us. */
static pid_t copy_stdin(void)
{
	static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	pid_t parent = getpid(), pid = fork();
	struct conn c;

	if (pid != 0)
		return pid;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent || conn_open(&c) != 0)
		_exit(0);
	for (;;) {
		unsigned char data[65536];
		ssize_t n = read(0, data, sizeof data);
		if (n < 0 && errno == EINTR)
			continue;
		struct buf req = { 0 };
		struct cur p;
		struct error e = { 0 };
		char tail[96];
		puts_(&req, "[\"stdin\",");
		put_str(&req, handle);
		snprintf(tail, sizeof tail, ",%lld,", job_id);
		puts_(&req, tail);
		if (n < 0)
			_exit(0); /* a read that failed: no EOF passed on, as oneshot._copy_stdin */
		if (n == 0) {
			if (isatty(0))
				_exit(0);
			puts_(&req, "null]");
			call(&c, &req, &p, &e);
			_exit(0);
		}
		put(&req, "\"", 1);
		for (ssize_t i = 0; i < n; i += 3) {
			unsigned v = data[i] << 16 | (i + 1 < n ? data[i + 1] << 8 : 0) | (i + 2 < n ? data[i + 2] : 0);
			char q[4] = { b64[v >> 18], b64[(v >> 12) & 63], i + 1 < n ? b64[(v >> 6) & 63] : '=', i + 2 < n ? b64[v & 63] : '=' };
			put(&req, q, 4);
		}
		puts_(&req, "\",{\"encoding\":\"base64\"}]");
		if (call(&c, &req, &p, &e) != REPLY_OK)
			_exit(0); /* the job stopped reading, or ended */
		free(req.s), free(e.code.s), free(e.message.s);
	}
}

/* ---- the commands -------------------------------------------------------- */

struct job {
	struct buf config; /* create's CONFIG */
	struct buf script, opts; /* spawn's SCRIPT (a JSON string) and OPTS */
	bool rm, contain;
	const char *prog; /* contain: PROG, for its messages */
	const char *mem; /* contain: the memory limit in bytes, for the OOM message */
};

/* Connect the main connection: 0, or -1 once the reason is said, or an errno
 * Python names in its own words. */
static int connect_or_say(void)
{
	int err = conn_open(&main_conn);

	if (err == ENOENT || err == ECONNREFUSED) {
		say("the daemon is not running (nothing listens on %s): start it with `corraldctl start` "
		    "(or `systemctl start corrald`), or name its socket with -s",
		    socket_path);
		return -1;
	}
	if (err == EACCES || err == EPERM) {
		say("permission denied on %s: run as root, or as a member of the socket's group "
		    "(`socket_group` in /etc/corral/corral.toml)",
		    socket_path);
		return -1;
	}
	return err;
}

/* oneshot._out_of_memory: the daemon says so, or a SIGKILL with OOM kills counted. */
static bool out_of_memory(const struct ending *end)
{
	struct buf req = { 0 };
	struct cur payload, stat, count;
	struct error err = { 0 };
	long long n;

	if (end->killed_by.s && strcmp(end->killed_by.s, "oom") == 0)
		return true;
	if (end->signal != 9 && end->status != 137)
		return false;
	puts_(&req, "[\"info\",");
	put_str(&req, handle);
	puts_(&req, "]");
	if (call(&main_conn, &req, &payload, &err) != REPLY_OK)
		return false;
	return member(payload, "memory_stat", &stat) && member(stat, "oom_count", &count) && get_int(count, &n) && n != 0;
}

/* The container's end: destroyed (contain, run --rm, a job that never started)
 * or, after run, stopped with its job over. Errors: it is gone already. */
static void end_container(const struct job *j, bool started)
{
	struct buf req = { 0 };
	struct cur payload;
	struct error err = { 0 };

	puts_(&req, j->rm || j->contain || !started ? "[\"destroy\"," : "[\"stop\",");
	put_str(&req, handle);
	puts_(&req, j->rm || j->contain || !started ? "]" : ",{\"kill\":true}]");
	call(&main_conn, &req, &payload, &err);
}

/* Create, spawn, follow, and the container's end on every path; the exit status. */
static int run_job(struct job *j, const sigset_t *forwarded)
{
	struct buf req = { 0 }, got = { 0 };
	struct cur payload;
	struct error err = { 0 };
	struct ending end = { .status = -1, .signal = -1 };
	pid_t feeder = -1;
	int rc, sigfd = signalfd(-1, forwarded, SFD_CLOEXEC);

	if (sigfd < 0) {
		say("signalfd: %s", strerror(errno));
		return 1;
	}
	puts_(&req, "[\"create\",");
	put(&req, j->config.s, j->config.len);
	puts_(&req, "]");
	rc = call(&main_conn, &req, &payload, &err);
	if (rc == REPLY_CLOSED)
		daemon_closed();
	if (rc == REPLY_ERROR) {
		if (j->contain)
			say("contain: %s", err.message.s);
		else
			say_error(&err);
		return 1;
	}
	if (!get_str(&payload, &got) || !got.s || got.len >= sizeof handle)
		daemon_closed();
	strcpy(handle, got.s);

	req.len = 0;
	puts_(&req, "[\"spawn\",");
	put_str(&req, handle);
	put(&req, ",", 1);
	put(&req, j->script.s, j->script.len);
	put(&req, ",", 1);
	put(&req, j->opts.s, j->opts.len);
	puts_(&req, "]");
	rc = call(&main_conn, &req, &payload, &err);
	if (rc != REPLY_OK || !get_int(payload, &job_id)) {
		end_container(j, false);
		if (rc == REPLY_CLOSED || rc == REPLY_OK)
			daemon_closed();
		if (j->contain)
			say("contain: %s: %s", j->prog, err.message.s);
		else
			say_error(&err);
		return 1;
	}
	if (j->contain && !null_stdin())
		feeder = copy_stdin();

	rc = follow(sigfd, !j->contain, &end, &err);
	if (feeder > 0)
		kill(feeder, SIGKILL);
	if (rc == ENDED && j->contain && out_of_memory(&end)) {
		say("contain: %s was killed: it exceeded the memory limit%s%s%s", j->prog, j->mem ? " of " : "",
		    j->mem ? j->mem : "", j->mem ? " bytes" : "");
		end.status = 137;
	}
	/* A stream that failed (our reader gone too) ends run's container as one whose
	 * job never started, as in run.py, where the job id was never assigned then. */
	end_container(j, rc == ENDED);
	if (rc == READER_GONE)
		return 141;
	if (rc == FAILED) {
		say_error(&err);
		return 1;
	}
	return end.status < 0 ? 255 : (int)end.status;
}

/* `run` as supervisor/cli/run.py builds it: CONFIG, then the job's SCRIPT and OPTS. */
static void parse_run(char **argv, int i, struct job *j)
{
	const char *v, *name = NULL, *rootfs = NULL, *mem = NULL, *cpus = NULL, *cpuset = NULL, *pids = NULL;
	const char *user = NULL, *dir = NULL, *timeout = NULL, *env[MAX_ITEMS];
	int nenv = 0;
	bool privileged = false;

	for (; argv[i] && strcmp(argv[i], "--") != 0; i++) {
		if (strcmp(argv[i], "--rm") == 0)
			j->rm = true;
		else if (strcmp(argv[i], "--privileged") == 0)
			privileged = true;
		else if (OPTION(NULL, "--name"))
			name = v;
		else if (OPTION(NULL, "--rootfs"))
			rootfs = v;
		else if (OPTION("-m", "--memory"))
			mem = v;
		else if (OPTION(NULL, "--cpus"))
			cpus = v;
		else if (OPTION(NULL, "--cpuset-cpus"))
			cpuset = v;
		else if (OPTION(NULL, "--pids-limit"))
			pids = v;
		else if (OPTION("-u", "--user"))
			user = v;
		else if (OPTION("-w", "--workdir"))
			dir = v;
		else if (OPTION(NULL, "--timeout"))
			timeout = v;
		else if (OPTION("-e", "--env") && nenv < MAX_ITEMS)
			env[nenv++] = v;
		else
			python(); /* another option, -d, -it, an image... */
	}
	if (!argv[i] || !argv[i + 1])
		python(); /* no `--`, or no command after it: /bin/sh, an image's Cmd */
	char **command = argv + i + 1;

	/* container_config: the keys in its order; --rm is grace time 0. */
	struct buf *c = &j->config;
	puts_(c, j->rm ? "{\"grace_time\":0" : "{\"grace_time\":null");
	if (name)
		puts_(c, ",\"handle\":"), put_str(c, name);
	char *root = rootfs ? abspath(rootfs) : NULL;
	if (root)
		puts_(c, ",\"rootfs\":"), put_str(c, root);
	if (mem || cpus || cpuset || pids) {
		const char *sep = "";
		puts_(c, ",\"limits\":{");
		if (mem)
			puts_(c, "\"mem\":"), put_size(c, mem), sep = ",";
		if (cpus)
			puts_(c, sep), puts_(c, "\"cpus\":"), put_float_text(c, cpus), sep = ",";
		if (cpuset)
			puts_(c, sep), puts_(c, "\"cpuset\":"), put_str(c, cpuset), sep = ",";
		if (pids)
			puts_(c, sep), puts_(c, "\"pids\":"), put_int_text(c, pids);
		puts_(c, "}");
	}
	if (nenv) {
		/* _env: -e K=V, or -e K for our value of K; a later K replaces the
		 * value in the first one's place (a dict's update). */
		const char *keys[MAX_ITEMS], *values[MAX_ITEMS];
		size_t klen[MAX_ITEMS];
		int n = 0;
		for (int e = 0; e < nenv; e++) {
			const char *eq = strchr(env[e], '='), *val;
			size_t kl = eq ? (size_t)(eq - env[e]) : strlen(env[e]);
			if (eq)
				val = eq + 1;
			else if (!(val = getenv(env[e])))
				python(); /* not NAME=VALUE: Python says so */
			if (kl == 0)
				python();
			int k = 0;
			while (k < n && !(klen[k] == kl && strncmp(keys[k], env[e], kl) == 0))
				k++;
			keys[k] = env[e], klen[k] = kl, values[k] = val;
			if (k == n)
				n++;
		}
		puts_(c, ",\"env\":{");
		for (int k = 0; k < n; k++) {
			char key[4096];
			if (klen[k] >= sizeof key)
				python();
			memcpy(key, keys[k], klen[k]), key[klen[k]] = 0;
			if (k)
				puts_(c, ",");
			put_str(c, key), puts_(c, ":"), put_str(c, values[k]);
		}
		puts_(c, "}");
	}
	char created[32];
	snprintf(created, sizeof created, "%lld", (long long)time(NULL));
	struct buf joined = { 0 };
	put_joined(&joined, command);
	puts_(c, ",\"properties\":{\"corral.created\":"), put_str(c, created);
	puts_(c, ",\"corral.root\":"), put_str(c, root ? root : "base");
	puts_(c, ",\"corral.command\":"), put_str(c, joined.s);
	puts_(c, ",\"corral.job\":\"1\"}}");

	/* script_of and job_opts(env=False) */
	struct buf script = { 0 };
	puts_(&script, "exec ");
	put(&script, joined.s, joined.len);
	put_str(&j->script, script.s);
	struct buf *o = &j->opts;
	const char *sep = "";
	puts_(o, "{");
	if (privileged)
		puts_(o, "\"privileged\":true"), sep = ",";
	if (user)
		puts_(o, sep), puts_(o, "\"user\":"), put_str(o, user), sep = ",";
	if (dir)
		puts_(o, sep), puts_(o, "\"dir\":"), put_str(o, dir), sep = ",";
	if (timeout)
		puts_(o, sep), puts_(o, "\"timeout\":"), put_float_text(o, timeout);
	puts_(o, "}");
}

/* `contain` as supervisor/cli/contain.py and oneshot.py build it. */
static void parse_contain(char **argv, int i, struct job *j)
{
	const char *v, *chroot = NULL, *mem = NULL, *cores = NULL, *address = NULL, *bridge = NULL;
	const char *gateway = NULL, *user = NULL;
	bool overlay = false;

	j->contain = true;
	for (; argv[i] && strcmp(argv[i], "--") != 0; i++) {
		if (strcmp(argv[i], "--overlay") == 0)
			overlay = true;
		else if (OPTION("-chroot", "--chroot"))
			chroot = v;
		else if (OPTION(NULL, "--memory-limit"))
			mem = v;
		else if (OPTION(NULL, "--cpu-core-ids"))
			cores = v;
		else if (OPTION(NULL, "--network-address"))
			address = v;
		else if (OPTION(NULL, "--bridge"))
			bridge = v;
		else if (OPTION(NULL, "--gateway"))
			gateway = v;
		else if (OPTION(NULL, "--user"))
			user = v;
		else
			python();
	}
	if (!chroot || !argv[i] || !argv[i + 1] || strcmp(argv[i + 1], "--") == 0)
		python();
	if (isatty(0) && isatty(1))
		python(); /* a terminal of its own: Python's */
	char **prog = argv + i + 1;
	j->prog = prog[0];

	/* config_of, checked in its order */
	struct buf *c = &j->config;
	char *root = abspath(chroot);
	struct stat st;
	if (stat(root, &st) < 0 || !S_ISDIR(st.st_mode)) {
		say("contain: -chroot %s: no such directory", chroot);
		exit(1);
	}
	puts_(c, "{\"rootfs\":"), put_str(c, root);
	if (!overlay)
		puts_(c, ",\"rootfs_mode\":\"direct\"");
	if (mem || cores) {
		puts_(c, ",\"limits\":{");
		if (mem) {
			size_t at = c->len;
			puts_(c, "\"mem\":"), put_size(c, mem);
			j->mem = strdup(c->s + at + 6);
		}
		if (cores)
			puts_(c, mem ? "," : ""), puts_(c, "\"cpuset\":"), put_str(c, cores);
		puts_(c, "}");
	}
	if (!address && (bridge || gateway)) {
		say("contain: a bridge or gateway needs an address (--network-address)");
		exit(1);
	}
	if (!address) {
		puts_(c, ",\"network\":\"none\"");
	} else {
		puts_(c, ",\"network\":{\"address\":"), put_str(c, address);
		if (bridge)
			puts_(c, ",\"bridge\":"), put_str(c, bridge);
		if (gateway)
			puts_(c, ",\"gateway\":"), put_str(c, gateway);
		puts_(c, "}");
	}
	puts_(c, ",\"grace_time\":0}");

	/* spawn: no SCRIPT, the argv; stdin when ours is not /dev/null */
	puts_(&j->script, "\"\"");
	struct buf *o = &j->opts;
	if (user)
		puts_(o, "{\"user\":"), put_str(o, user);
	else
		puts_(o, "{\"privileged\":true");
	puts_(o, ",\"argv\":[");
	for (int a = 0; prog[a]; a++)
		puts_(o, a ? "," : ""), put_str(o, prog[a]);
	puts_(o, "]");
	if (!null_stdin())
		puts_(o, ",\"stdin\":true");
	puts_(o, "}");
}

int main(int argc, char **argv)
{
	struct job job = { 0 };
	const char *sock = NULL, *v;
	int i;
	sigset_t forwarded;

	(void)argc;
	original_argv = argv;
	if (getenv("CORRAL_NO_FRONT") && *getenv("CORRAL_NO_FRONT"))
		python();
	for (i = 1; argv[i]; i++)
		if (!valid_utf8((const unsigned char *)argv[i]))
			python(); /* Python's surrogateescape and its messages */
	/* _split: the global options before the command */
	for (i = 1; argv[i] && argv[i][0] == '-'; i++) {
		if (OPTION("-s", "--socket"))
			sock = v;
		else
			python();
	}
	if (!argv[i])
		python();
	if (strcmp(argv[i], "run") == 0)
		parse_run(argv, i + 1, &job);
	else if (strcmp(argv[i], "contain") == 0)
		parse_contain(argv, i + 1, &job);
	else
		python();
	socket_path = sock ? sock : getenv("CORRAL_SOCKET") && *getenv("CORRAL_SOCKET") ? getenv("CORRAL_SOCKET") : DEFAULT_SOCKET;

	/* From here on, the signals we pass on are the job's: held until it exists
	 * (oneshot.run_alone and run.run_job hold them too, and the end of the
	 * container is never interrupted by one). */
	sigemptyset(&forwarded);
	for (int s = 0; s < 6; s++)
		sigaddset(&forwarded, (int[]){ SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 }[s]);
	sigprocmask(SIG_BLOCK, &forwarded, NULL);
	signal(SIGPIPE, SIG_IGN); /* a reader gone: EPIPE, exit 141 in silence */
	int err = connect_or_say();
	if (err > 0) {
		/* a reason Python names in its own words */
		sigprocmask(SIG_UNBLOCK, &forwarded, NULL);
		signal(SIGPIPE, SIG_DFL);
		python();
	}
	if (err)
		return 1;
	return run_job(&job, &forwarded);
}
