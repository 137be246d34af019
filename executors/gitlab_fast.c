/*
 * corral-gitlab-fast: the GitLab custom executor driver, in C.
 *
 * GitLab Runner starts a process for every stage of a job: `config_exec`,
 * `prepare_exec`, `run_exec SCRIPT STAGE` once per sub-stage, `cleanup_exec`.
 * A Python driver pays ~40 ms to start each time. This program takes the
 * command line of `corral-gitlab` (executors/gitlab.py) and does what it does,
 * on its common path, in about a millisecond:
 *
 *   config [--builds-dir DIR] [--cache-dir DIR]: prints the runner's config
 *     JSON, the container's name `gitlab-$CUSTOM_ENV_CI_JOB_ID`;
 *   prepare [--builds-dir DIR] [--cache-dir DIR]: destroys a container of
 *     that name left by an earlier attempt, creates it (grace time, limits,
 *     disk size from CORRAL_*, the image's root filesystem directory under
 *     $CORRAL_IMAGES; an image with none is the Python driver's, which has the
 *     daemon pull it), makes DIR and DIR owned by the container's user;
 *   run SCRIPT STAGE: SCRIPT's contents run as the job's SCRIPT (`spawn`
 *     with no options: the container's `corral` user), the output is copied
 *     to this process's stdout and stderr as it comes (`stream` in base64,
 *     exact bytes), then `link` gives the status; a failed script: its status
 *     in $BUILD_EXIT_CODE_FILE and the exit status $BUILD_FAILURE_EXIT_CODE;
 *     SIGTERM or SIGINT once the job may have started: every process of the
 *     container but its init is killed (`kill -KILL -1` as root, on a
 *     connection of its own), then the exit status $BUILD_FAILURE_EXIT_CODE;
 *   cleanup: destroys the container; one already gone is no error.
 *
 * Anything else that goes wrong: one line on stderr and the exit status
 * $SYSTEM_FAILURE_EXIT_CODE; SIGTERM or SIGINT (but in run's job): the line
 * "cancelled by SIG..." and $BUILD_FAILURE_EXIT_CODE. The socket is
 * $CORRAL_SOCKET (default /run/corral/corral.sock).
 *
 * Anything unusual is left to the Python driver, which this program becomes
 * (execv of `corral-gitlab ARGS...`, from this program's own directory)
 * before anything was asked of the daemon: another command line (usage,
 * --help), a script too long for one argument or holding a NUL byte or bytes
 * that are not UTF-8, a setting it does not read as plainly valid, an image
 * name or a directory, job id or path its messages or requests could not give
 * as Python does. Its messages are the Python driver's, word for word.
 *
 * Build: gcc -Os -static -Wall -Wextra -o corral-gitlab-fast gitlab_fast.c
 * (executors/build.py).
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdnoreturn.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define PROGRAM "corral-gitlab"
#define DRIVER "corral-gitlab" /* the Python driver, beside this program */
#define DEFAULT_SOCKET "/run/corral/corral.sock"
#define DEFAULT_IMAGES "/var/lib/corral/images"
#define VERSION "0.1.0" /* the Python driver's */
#define MAX_INLINE_SCRIPT 131071 /* the longest SCRIPT a spawn takes */
/* The longest line read from the daemon. A stream line holds at most 256 KiB
 * of output in base64 (~350,000 bytes); a link reply, which repeats the whole
 * output, is read only as far as its status (its head), the rest skipped. */
#define MAX_LINE (1024 * 1024)
#define KILL_LINE 65536 /* the kill's reply: [status, null, null], or an error */
#define MAX_DEPTH 64    /* JSON nesting read in CORRAL_LIMITS */
#define MAX_MESSAGE 4096

extern char **environ;

/* ---- what the runner gave ---------------------------------------------- */

static const char *script_path, *stage;
/* The stage as messages name it: "config", "prepare", "run STAGE", "cleanup". */
static char label[256] = "run";
static bool in_run; /* a cancel kills the job's processes (run's job may have started) */
static int build_failure = 1, system_failure = 2;

/* ---- cancel ------------------------------------------------------------- */

/* The first SIGTERM or SIGINT; later ones are ignored (the runner SIGKILLs at
 * its deadline anyway). The byte in wake[] wakes a poll() that started after
 * the flag was checked. */
static volatile sig_atomic_t cancelled;
static int wake[2] = { -1, -1 };

static void on_signal(int sig)
{
	int saved = errno;

	if (!cancelled) {
		cancelled = sig;
		signal(SIGTERM, SIG_IGN);
		signal(SIGINT, SIG_IGN);
		if (write(wake[1], "x", 1) < 0) {
			/* the pipe is full: a wake-up is pending anyway */
		}
	}
	errno = saved;
}

static void catch_signals(void)
{
	struct sigaction sa = { .sa_handler = on_signal }; /* no SA_RESTART: blocked calls return EINTR */

	if (pipe2(wake, O_CLOEXEC | O_NONBLOCK) < 0)
		wake[0] = wake[1] = -1;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN); /* a closed stdout or socket is EPIPE, as in Python */
}

static const char *signal_name(int sig)
{
	return sig == SIGINT ? "SIGINT" : "SIGTERM";
}

/* ---- messages and exits ------------------------------------------------- */

static void write_stderr(const char *s, size_t n)
{
	ssize_t w;

	while (n > 0) {
		w = write(STDERR_FILENO, s, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		s += w;
		n -= (size_t)w;
	}
}

/* One line on stderr, "corral-gitlab: run STAGE: MESSAGE", as the Python driver's fail(). */
__attribute__((format(printf, 1, 2))) static void say(const char *fmt, ...)
{
	char msg[MAX_MESSAGE + 512];
	int n = snprintf(msg, sizeof msg, "%s: %s: ", PROGRAM, label);
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg + n, sizeof msg - (size_t)n - 1, fmt, ap);
	va_end(ap);
	n = (int)strlen(msg);
	msg[n++] = '\n';
	write_stderr(msg, (size_t)n);
}

/* The same line with MESSAGE's bytes as they are (a message from the daemon). */
static void say_text(const char *message, size_t len)
{
	size_t n = strlen(PROGRAM) + strlen(label) + 4;
	char *msg = malloc(n + len + 1);

	if (!msg) {
		say("%.*s", (int)len, message);
		return;
	}
	snprintf(msg, n + 1, "%s: %s: ", PROGRAM, label);
	memcpy(msg + n, message, len);
	msg[n + len] = '\n';
	write_stderr(msg, n + len + 1);
	free(msg);
}

#define system_fail(...)                \
	do {                            \
		say(__VA_ARGS__);       \
		exit(system_failure);   \
	} while (0)

/* An OSError's text as Python prints it: "[Errno 32] Broken pipe". */
#define os_fail(errnum) system_fail("[Errno %d] %s", (errnum), strerror(errnum))

static noreturn void exit_cancelled(bool killed)
{
	say("cancelled by %s%s", signal_name(cancelled), killed ? "; the stage's processes were killed" : "");
	exit(build_failure);
}

/* ---- the Python driver, for anything unusual ---------------------------- */

static char **original_argv;
static int original_argc;

/* Become `corral-gitlab ARGS...` from this program's directory. Only before
 * the daemon was asked anything: the Python driver starts the stage afresh. */
static noreturn void fallback(void)
{
	char self[PATH_MAX], *slash, **argv;
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - sizeof DRIVER - 1);
	int i, argc = 0;

	if (cancelled)
		exit_cancelled(false);
	if (n <= 0 || (size_t)n >= sizeof self - sizeof DRIVER - 1 || !(slash = memrchr(self, '/', (size_t)n)))
		system_fail("cannot find the Python driver %s: /proc/self/exe: %s", DRIVER,
			    n < 0 ? strerror(errno) : "not a path");
	memcpy(slash + 1, DRIVER, sizeof DRIVER);
	if (!(argv = calloc((size_t)original_argc + 1, sizeof *argv)))
		system_fail("out of memory");
	argv[argc++] = self;
	for (i = 1; i < original_argc; i++)
		argv[argc++] = original_argv[i];
	argv[argc] = NULL;
	/* As the runner left them: the Python driver catches TERM and INT itself.
	 * A signal from here on is its own start's, which it does not survive either. */
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	signal(SIGPIPE, SIG_DFL);
	if (cancelled)
		exit_cancelled(false);
	execve(self, argv, environ);
	system_fail("cannot run the Python driver %s: %s", self, strerror(errno));
}

/* ---- checks of the runner's input ---------------------------------------- */

/* The runner's exit code NAME as Python's int(text) if text.lstrip("-").isdigit()
 * reads it: DEFAULT when unset or not a number; a text only Python decides about
 * (Unicode digits, "--5") goes to the Python driver. */
static int exit_code(const char *name, int def)
{
	const char *text = getenv(name), *p;
	long v;

	if (!text || !*text)
		return def;
	p = text + (*text == '-');
	if (*p && strspn(p, "0123456789") == strlen(p) && strlen(p) <= 9) {
		v = strtol(text, NULL, 10);
		return (int)v;
	}
	for (p = text; *p == '-'; p++)
		;
	for (; *p; p++)
		if ((unsigned char)*p >= 0x80)
			fallback();
	/* ASCII, and not '-' then digits; "--5" would be Python's traceback */
	p = text + strspn(text, "-");
	if (*p && strspn(p, "0123456789") == strlen(p))
		fallback();
	return def;
}

/* Whether Python prints the path as given: pathlib drops "//", "/./", a
 * leading "./" and a trailing "/" (a message naming it would differ). */
static bool plain_path(const char *path)
{
	size_t n = strlen(path);

	return n > 0 && !strstr(path + 1, "//") && !strstr(path, "/./") && strncmp(path, "./", 2) &&
	       strcmp(path, ".") && path[n - 1] != '/' && !(n >= 2 && !strcmp(path + n - 2, "/."));
}

/* Printable ASCII with no quote or backslash: Python's repr() is the text in '...'. */
static bool plain_text(const char *s)
{
	for (; *s; s++)
		if (*s < 0x20 || *s > 0x7e || *s == '\'' || *s == '\\')
			return false;
	return true;
}

/* A decimal number Python's float() reads the same way, >= 0 (the settings'
 * _number); anything else goes to the Python driver, which names the problem. */
static void check_number(const char *name)
{
	const char *text = getenv(name);
	size_t n;

	if (!text || !*text)
		return;
	n = strspn(text, "0123456789");
	if (n > 0 && text[n] == '.')
		n += 1 + strspn(text + n + 1, "0123456789");
	if (n == 0 || text[n])
		fallback();
}

/* ---- JSON ----------------------------------------------------------------- */

struct cur {
	const char *p, *end;
};

static void skip_ws(struct cur *c)
{
	while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
		c->p++;
}

static bool eat(struct cur *c, char ch)
{
	skip_ws(c);
	if (c->p < c->end && *c->p == ch) {
		c->p++;
		return true;
	}
	return false;
}

static int hex4(const char *p)
{
	int v = 0, i, d;

	for (i = 0; i < 4; i++) {
		d = p[i] >= '0' && p[i] <= '9'   ? p[i] - '0'
		    : p[i] >= 'a' && p[i] <= 'f' ? p[i] - 'a' + 10
		    : p[i] >= 'A' && p[i] <= 'F' ? p[i] - 'A' + 10
						 : -1;
		if (d < 0)
			return -1;
		v = v * 16 + d;
	}
	return v;
}

static size_t put_utf8(char *out, unsigned cp)
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xc0 | cp >> 6);
		out[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xe0 | cp >> 12);
		out[1] = (char)(0x80 | (cp >> 6 & 0x3f));
		out[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	out[0] = (char)(0xf0 | cp >> 18);
	out[1] = (char)(0x80 | (cp >> 12 & 0x3f));
	out[2] = (char)(0x80 | (cp >> 6 & 0x3f));
	out[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

/* Read the JSON string at the cursor; with OUT, decode it there (it may be the
 * string's own bytes: the text never grows) as Python prints it on stderr:
 * UTF-8, a lone surrogate as "\udcXX" text (backslashreplace). False when it is
 * not a string or not one Python's json accepts (a raw control character, a bad
 * escape). */
static bool json_string(struct cur *c, char *out, size_t *len)
{
	size_t n = 0;
	int cp, lo;

	if (!eat(c, '"'))
		return false;
	while (c->p < c->end && *c->p != '"') {
		unsigned char ch = (unsigned char)*c->p;

		if (ch < 0x20)
			return false;
		if (ch != '\\') {
			if (out)
				out[n++] = (char)ch;
			c->p++;
			continue;
		}
		if (c->end - c->p < 2)
			return false;
		switch (c->p[1]) {
		case '"': case '\\': case '/': cp = c->p[1]; break;
		case 'b': cp = '\b'; break;
		case 'f': cp = '\f'; break;
		case 'n': cp = '\n'; break;
		case 'r': cp = '\r'; break;
		case 't': cp = '\t'; break;
		case 'u':
			if (c->end - c->p < 6 || (cp = hex4(c->p + 2)) < 0)
				return false;
			c->p += 4;
			break;
		default:
			return false;
		}
		c->p += 2;
		if (cp >= 0xd800 && cp < 0xdc00 && c->end - c->p >= 6 && c->p[0] == '\\' && c->p[1] == 'u' &&
		    (lo = hex4(c->p + 2)) >= 0xdc00 && lo < 0xe000) {
			cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
			c->p += 6;
		}
		if (!out)
			continue;
		if (cp >= 0xd800 && cp < 0xe000)
			n += (size_t)sprintf(out + n, "\\u%04x", (unsigned)cp); /* 6 bytes for 6 read */
		else
			n += put_utf8(out + n, (unsigned)cp);
	}
	if (c->p >= c->end)
		return false;
	c->p++;
	if (len)
		*len = n;
	return true;
}

/* A JSON number as Python's json reads one (no NaN or Infinity: those go to Python). */
static bool json_number(struct cur *c)
{
	const char *p = c->p;

	skip_ws(c);
	p = c->p;
	if (p < c->end && *p == '-')
		p++;
	if (p >= c->end || *p < '0' || *p > '9')
		return false;
	if (*p == '0')
		p++;
	else
		while (p < c->end && *p >= '0' && *p <= '9')
			p++;
	if (p < c->end && *p == '.') {
		if (++p >= c->end || *p < '0' || *p > '9')
			return false;
		while (p < c->end && *p >= '0' && *p <= '9')
			p++;
	}
	if (p < c->end && (*p == 'e' || *p == 'E')) {
		p++;
		if (p < c->end && (*p == '+' || *p == '-'))
			p++;
		if (p >= c->end || *p < '0' || *p > '9')
			return false;
		while (p < c->end && *p >= '0' && *p <= '9')
			p++;
	}
	c->p = p;
	return true;
}

static bool json_word(struct cur *c, const char *word)
{
	size_t n = strlen(word);

	skip_ws(c);
	if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n))
		return false;
	c->p += n;
	return true;
}

/* Skip one JSON value; false if there is none (malformed, or nested too deep). */
static bool skip_value(struct cur *c, int depth)
{
	skip_ws(c);
	if (c->p >= c->end || depth > MAX_DEPTH)
		return false;
	switch (*c->p) {
	case '"':
		return json_string(c, NULL, NULL);
	case '{':
		c->p++;
		if (eat(c, '}'))
			return true;
		do {
			if (!json_string(c, NULL, NULL) || !eat(c, ':') || !skip_value(c, depth + 1))
				return false;
		} while (eat(c, ','));
		return eat(c, '}');
	case '[':
		c->p++;
		if (eat(c, ']'))
			return true;
		do {
			if (!skip_value(c, depth + 1))
				return false;
		} while (eat(c, ','));
		return eat(c, ']');
	case 't':
		return json_word(c, "true");
	case 'f':
		return json_word(c, "false");
	case 'n':
		return json_word(c, "null");
	default:
		return json_number(c);
	}
}

/* A JSON integer (a status, a job id), within a long long's range. */
static bool json_int(struct cur *c, long long *v)
{
	const char *start;
	char digits[24];
	size_t n;

	skip_ws(c);
	start = c->p;
	if (!json_number(c) || (n = (size_t)(c->p - start)) >= sizeof digits || memchr(start, '.', n) ||
	    memchr(start, 'e', n) || memchr(start, 'E', n))
		return false;
	memcpy(digits, start, n);
	digits[n] = '\0';
	errno = 0;
	*v = strtoll(digits, NULL, 10);
	return !errno;
}

/* CORRAL_LIMITS as the settings read it: a JSON object. One this reader does
 * not take (or none) goes to the Python driver, which accepts it or names the problem. */
static void check_limits(void)
{
	const char *text = getenv("CORRAL_LIMITS");
	struct cur c;

	if (!text || !*text)
		return;
	c.p = text;
	c.end = text + strlen(text);
	skip_ws(&c);
	if (c.p >= c.end || *c.p != '{' || !skip_value(&c, 0))
		fallback();
	skip_ws(&c);
	if (c.p != c.end)
		fallback();
}

/* ---- UTF-8 and the request ------------------------------------------------- */

/* Whether S is UTF-8 as Python decodes it strictly (no surrogates, no overlong
 * forms, nothing past U+10FFFF): then its JSON string is the same text. */
static bool valid_utf8(const unsigned char *s, size_t n)
{
	size_t i = 0, k, len;
	unsigned cp, min;

	while (i < n) {
		if (s[i] < 0x80) {
			i++;
			continue;
		}
		if (s[i] >= 0xc2 && s[i] <= 0xdf)
			len = 2, cp = s[i] & 0x1f, min = 0x80;
		else if (s[i] >= 0xe0 && s[i] <= 0xef)
			len = 3, cp = s[i] & 0x0f, min = 0x800;
		else if (s[i] >= 0xf0 && s[i] <= 0xf4)
			len = 4, cp = s[i] & 0x07, min = 0x10000;
		else
			return false;
		if (n - i < len)
			return false;
		for (k = 1; k < len; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (s[i + k] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000))
			return false;
		i += len;
	}
	return true;
}

struct buf {
	char *p;
	size_t len, cap;
};

static void put(struct buf *b, const char *s, size_t n)
{
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2;
		if (!(b->p = realloc(b->p, b->cap)))
			system_fail("out of memory");
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

static void put_str(struct buf *b, const char *s)
{
	put(b, s, strlen(s));
}

/* S (valid UTF-8) as a JSON string: the same text Python's json.dumps gives
 * the daemon, with the non-ASCII characters as UTF-8 rather than escapes. */
static void put_json(struct buf *b, const char *s, size_t n)
{
	char esc[8];
	size_t i, run;

	put(b, "\"", 1);
	for (i = 0; i < n; i += run) {
		for (run = 0; i + run < n && (unsigned char)s[i + run] >= 0x20 && s[i + run] != '"' &&
			      s[i + run] != '\\';
		     run++)
			;
		put(b, s + i, run);
		if (i + run < n) {
			snprintf(esc, sizeof esc, "\\u%04x", (unsigned char)s[i + run]);
			put(b, esc, 6);
			run++;
		}
	}
	put(b, "\"", 1);
}

/* ---- the connection ------------------------------------------------------- */

struct conn {
	int fd;
	char *buf; /* what was received and not yet used: buf[start..end) */
	size_t start, end, cap;
};

static void conn_close(struct conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

/* Connect to the daemon; the errno when it cannot be reached. */
static int conn_open(struct conn *c, const char *path, char *buf, size_t cap)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };

	c->buf = buf;
	c->cap = cap;
	c->start = c->end = 0;
	if (strlen(path) >= sizeof addr.sun_path)
		return ENAMETOOLONG;
	strcpy(addr.sun_path, path);
	if ((c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		return errno;
	if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
		int err = errno;

		conn_close(c);
		return err;
	}
	return 0;
}

enum { IO_OK, IO_CANCELLED };

/* Wait until FD is ready for EVENTS or a signal came: IO_CANCELLED then. */
static int wait_fd(int fd, short events, bool cancellable)
{
	struct pollfd pfd[2] = { { .fd = fd, .events = events }, { .fd = wake[0], .events = POLLIN } };

	for (;;) {
		if (cancellable && cancelled)
			return IO_CANCELLED;
		if (poll(pfd, cancellable && wake[0] >= 0 ? 2 : 1, -1) >= 0) {
			if (pfd[0].revents)
				return IO_OK;
		} else if (errno != EINTR) {
			os_fail(errno);
		}
	}
}

/* Write all of S to FD (stdout, stderr or the socket), through EINTR and EAGAIN. */
static int write_all(int fd, const char *s, size_t n, bool cancellable)
{
	ssize_t w;

	while (n > 0) {
		if (cancellable && cancelled)
			return IO_CANCELLED;
		w = fd == STDOUT_FILENO || fd == STDERR_FILENO ? write(fd, s, n) : send(fd, s, n, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				os_fail(errno);
			if (wait_fd(fd, POLLOUT, cancellable) == IO_CANCELLED)
				return IO_CANCELLED;
			continue;
		}
		s += w;
		n -= (size_t)w;
	}
	return IO_OK;
}

/* The next line from the daemon, without its newline, in *LINE. A line longer
 * than the buffer: with HEAD, its first bytes (the rest is skipped by
 * skip_rest); without, a failure. */
static int read_line(struct conn *c, struct cur *line, bool cancellable, bool head, bool *truncated)
{
	char *nl;
	ssize_t n;

	for (;;) {
		if ((nl = memchr(c->buf + c->start, '\n', c->end - c->start))) {
			line->p = c->buf + c->start;
			line->end = nl;
			c->start = (size_t)(nl - c->buf) + 1;
			return IO_OK;
		}
		if (c->start > 0) {
			memmove(c->buf, c->buf + c->start, c->end - c->start);
			c->end -= c->start;
			c->start = 0;
		}
		if (c->end == c->cap) {
			if (!head)
				system_fail("the daemon sent a line longer than %zu bytes", c->cap);
			line->p = c->buf;
			line->end = c->buf + c->end;
			c->start = c->end = 0;
			*truncated = true;
			return IO_OK;
		}
		if (wait_fd(c->fd, POLLIN, cancellable) == IO_CANCELLED)
			return IO_CANCELLED;
		n = read(c->fd, c->buf + c->end, c->cap - c->end);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			os_fail(errno);
		if (n == 0)
			system_fail("the daemon closed the connection");
		c->end += (size_t)n;
	}
}

/* Skip what is left of a line read truncated. */
static int skip_rest(struct conn *c, bool cancellable)
{
	struct cur line;
	bool truncated;

	do {
		truncated = false;
		if (read_line(c, &line, cancellable, true, &truncated) == IO_CANCELLED)
			return IO_CANCELLED;
	} while (truncated);
	return IO_OK;
}

static noreturn void malformed(const struct cur *line)
{
	int n = (int)(line->end - line->p);

	system_fail("the daemon sent a line this program cannot read: %.*s%s", n > 200 ? 200 : n, line->p,
		    n > 200 ? "..." : "");
}


/* Read an object's key and the colon after it: whether the key is NAME (the
 * keys read here have no escapes). */
static bool key_is(struct cur *c, const struct cur *line, const char *name)
{
	size_t n = strlen(name);
	const char *start;

	skip_ws(c);
	start = c->p;
	if (!json_string(c, NULL, NULL))
		malformed(line);
	if (!eat(c, ':'))
		malformed(line);
	return (size_t)(c->p - start) >= n + 2 && start[n + 1] == '"' && !memcmp(start + 1, name, n);
}

/* An error reply's payload, {"code": CODE, "message": MESSAGE}: the stage fails
 * with the message, as the Python client's CorralError prints. */
static noreturn void reply_error(struct cur *c, const struct cur *line)
{
	char *out;
	size_t n;

	c->p++; /* the payload's '{' */
	do {
		if (key_is(c, line, "message")) {
			skip_ws(c);
			out = (char *)c->p; /* decoded in place: the line is ours */
			if (!json_string(c, out, &n))
				malformed(line);
			say_text(out, n);
			exit(system_failure);
		}
		if (!skip_value(c, 0))
			malformed(line);
	} while (eat(c, ','));
	malformed(line);
}

/* Whether the error payload at C (its '{') has the code CODE. */
static bool error_code_is(struct cur c, const struct cur *line, const char *code)
{
	const char *start;
	size_t n = strlen(code);

	c.p++;
	do {
		if (key_is(&c, line, "code")) {
			skip_ws(&c);
			start = c.p;
			return json_string(&c, NULL, NULL) && (size_t)(c.p - start) == n + 2 &&
			       !memcmp(start + 1, code, n);
		}
		if (!skip_value(&c, 0))
			malformed(line);
	} while (eat(&c, ','));
	return false;
}

/* Open a reply line, {"type": ..., "payload": ...}, up to its payload: true
 * for a success; an error reply (its payload an object) with the code
 * TOLERATED (if any) is false, any other fails the stage. */
static bool open_reply_tolerating(struct cur *c, const struct cur *line, const char *tolerated)
{
	*c = *line;
	if (!eat(c, '{'))
		malformed(line);
	while (!key_is(c, line, "payload"))
		if (!skip_value(c, 0) || !eat(c, ','))
			malformed(line);
	skip_ws(c);
	if (c->p < c->end && *c->p == '{') {
		if (tolerated && error_code_is(*c, line, tolerated))
			return false;
		reply_error(c, line);
	}
	return true;
}

static void open_reply(struct cur *c, const struct cur *line)
{
	open_reply_tolerating(c, line, NULL);
}

/* ---- base64 ---------------------------------------------------------------- */

static int b64(unsigned char ch)
{
	return ch >= 'A' && ch <= 'Z'   ? ch - 'A'
	       : ch >= 'a' && ch <= 'z' ? ch - 'a' + 26
	       : ch >= '0' && ch <= '9' ? ch - '0' + 52
	       : ch == '+'              ? 62
	       : ch == '/'              ? 63
					: -1;
}

/* Decode S[0..N) (standard alphabet, padded) in place; its length, or -1. */
static ssize_t base64_decode(char *s, size_t n)
{
	size_t i, o = 0;
	int v[4], k, pad;

	if (n % 4)
		return -1;
	for (i = 0; i < n; i += 4) {
		pad = 0;
		for (k = 0; k < 4; k++) {
			unsigned char ch = (unsigned char)s[i + k];

			if (ch == '=' && i + 4 == n && k >= 2 && (k == 3 || s[i + 3] == '=')) {
				v[k] = 0;
				pad++;
			} else if ((v[k] = b64(ch)) < 0 || pad) {
				return -1;
			}
		}
		s[o++] = (char)(v[0] << 2 | v[1] >> 4);
		if (pad < 2)
			s[o++] = (char)((v[1] & 0xf) << 4 | v[2] >> 2);
		if (pad < 1)
			s[o++] = (char)((v[2] & 0x3) << 6 | v[3]);
	}
	return (ssize_t)o;
}

/* ---- the stage ------------------------------------------------------------- */

static char line_buf[MAX_LINE];
static char kill_buf[KILL_LINE];
static const char *socket_path;
static char handle[96];
static struct conn conn = { .fd = -1 };

/* SIGTERM or SIGINT once the job may have started: kill every process of the
 * container but its init, on a connection of its own (the job's may be
 * mid-reply), as the Python driver's kill_processes; the container stays. */
static noreturn void cancel_job(void)
{
	struct conn k = { .fd = -1 };
	struct cur line, c;
	char req[256];
	bool truncated = false;
	int err, n;

	if ((err = conn_open(&k, socket_path, kill_buf, sizeof kill_buf)))
		system_fail("cannot reach corrald at %s: %s", socket_path, strerror(err));
	n = snprintf(req, sizeof req,
		     "[\"run\",\"%s\",\"kill -KILL -1\",{\"privileged\":true,\"discard_output\":true}]\n", handle);
	write_all(k.fd, req, (size_t)n, false);
	read_line(&k, &line, false, true, &truncated);
	open_reply(&c, &line);
	conn_close(&k);
	exit_cancelled(true);
}

/* SIGTERM or SIGINT while the daemon is asked something: in run, the job may
 * have started and is killed; elsewhere the stage just ends, as in Python. */
static noreturn void on_cancel(void)
{
	if (in_run)
		cancel_job();
	exit_cancelled(false);
}

/* Send a request on the stage's connection. */
static void send_request(const char *req, size_t n)
{
	if (write_all(conn.fd, req, n, true) == IO_CANCELLED)
		on_cancel();
}

static void next_line(struct cur *line)
{
	if (read_line(&conn, line, true, false, NULL) == IO_CANCELLED)
		on_cancel();
}

/* The SCRIPT file's bytes (at most MAX_INLINE_SCRIPT of them, else the Python
 * driver copies it in), NUL-terminated. */
static char *read_script(size_t *len)
{
	static char script[MAX_INLINE_SCRIPT + 2];
	size_t n = 0;
	ssize_t r;
	int fd, err;

	while ((fd = open(script_path, O_RDONLY | O_CLOEXEC)) < 0 && errno == EINTR && !cancelled)
		;
	if (fd >= 0) {
		while (n < sizeof script - 1 && (r = read(fd, script + n, sizeof script - 1 - n)) != 0) {
			if (r < 0 && errno == EINTR && !cancelled)
				continue;
			if (r < 0) {
				err = errno;
				close(fd);
				errno = err;
				fd = -1;
				break;
			}
			n += (size_t)r;
		}
		if (fd >= 0)
			close(fd);
	}
	if (cancelled)
		exit_cancelled(false);
	if (fd < 0) {
		err = errno;
		if (!plain_path(script_path))
			fallback();
		system_fail("script %s: %s", script_path, strerror(err));
	}
	if (n > MAX_INLINE_SCRIPT || memchr(script, '\0', n) || !valid_utf8((unsigned char *)script, n))
		fallback(); /* copied into the container, or sent with its undecodable bytes */
	script[n] = '\0';
	*len = n;
	return script;
}

/* Copy the job's output to stdout and stderr until it has ended and is drained. */
static void stream_output(long long job)
{
	char req[256];
	struct cur line, c;
	const char *name;
	char *data;
	size_t n;
	ssize_t bytes;
	int fd;

	n = (size_t)snprintf(req, sizeof req, "[\"stream\",\"%s\",%lld,{\"encoding\":\"base64\"}]\n", handle, job);
	send_request(req, n);
	for (;;) {
		next_line(&line);
		c = line;
		if (!eat(&c, '[')) {
			open_reply(&c, &line); /* the end: {"type": "object", "payload": []} */
			return;
		}
		skip_ws(&c);
		name = c.p;
		if (!json_string(&c, NULL, NULL) || c.p - name != 8 ||
		    (memcmp(name, "\"stdout\"", 8) && memcmp(name, "\"stderr\"", 8)) || !eat(&c, ','))
			malformed(&line);
		fd = name[4] == 'o' ? STDOUT_FILENO : STDERR_FILENO;
		skip_ws(&c);
		data = (char *)c.p;
		if (!json_string(&c, data, &n) || !eat(&c, ']') || (bytes = base64_decode(data, n)) < 0)
			malformed(&line);
		skip_ws(&c);
		if (c.p != c.end)
			malformed(&line);
		if (write_all(fd, data, (size_t)bytes, true) == IO_CANCELLED)
			cancel_job();
	}
}

/* The job's exit status from link (its output, repeated there, is skipped);
 * false when it has none (the container stopped under it). */
static bool link_status(long long job, long long *status)
{
	char req[256];
	struct cur line, c;
	bool truncated = false, known;
	size_t n;

	n = (size_t)snprintf(req, sizeof req, "[\"link\",\"%s\",%lld,{\"encoding\":\"base64\"}]\n", handle, job);
	send_request(req, n);
	if (read_line(&conn, &line, true, true, &truncated) == IO_CANCELLED)
		cancel_job();
	open_reply(&c, &line);
	if (!eat(&c, '['))
		malformed(&line);
	known = !json_word(&c, "null");
	if (known && !json_int(&c, status))
		malformed(&line);
	if (truncated && skip_rest(&conn, true) == IO_CANCELLED)
		cancel_job();
	return known;
}

static noreturn void build_failed(long long status)
{
	const char *file = getenv("BUILD_EXIT_CODE_FILE");
	char text[32];
	int fd, n = snprintf(text, sizeof text, "%lld\n", status);

	if (file && *file) {
		/* The runner reads the script's own status here (allow_failure: exit_codes). */
		while ((fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666)) < 0 && errno == EINTR)
			;
		if (fd < 0)
			system_fail("BUILD_EXIT_CODE_FILE: %s", strerror(errno));
		for (ssize_t w, done = 0; done < n; done += w)
			if ((w = write(fd, text + done, (size_t)(n - done))) < 0) {
				if (errno != EINTR)
					system_fail("BUILD_EXIT_CODE_FILE: %s", strerror(errno));
				w = 0;
			}
		if (close(fd) < 0 && errno != EINTR)
			system_fail("BUILD_EXIT_CODE_FILE: %s", strerror(errno));
	}
	exit(build_failure);
}

/* ---- the settings and the job (Settings.from_env, job_handle) ------------- */

static const char *job_id;

/* The runner's exit codes, and the signals caught: for every stage. */
static void start_stage(void)
{
	build_failure = exit_code("BUILD_FAILURE_EXIT_CODE", 1);
	system_failure = exit_code("SYSTEM_FAILURE_EXIT_CODE", 2);
	catch_signals();
}

/* The settings every stage but config reads (Settings.from_env): a value not
 * plainly valid goes to the Python driver, which takes it or names the problem. */
static void read_settings(void)
{
	check_limits();
	check_number("CORRAL_GRACE_TIME");
	check_number("CORRAL_DISK_SIZE_MB");
	socket_path = getenv("CORRAL_SOCKET");
	if (!socket_path || !*socket_path)
		socket_path = DEFAULT_SOCKET;
}

/* The container's handle, gitlab-JOB_ID, from the job id the runner gives every stage. */
static void job_handle(void)
{
	job_id = getenv("CUSTOM_ENV_CI_JOB_ID");
	job_id = job_id ? job_id : "";
	if (!*job_id || strspn(job_id, "0123456789") != strlen(job_id)) {
		if (!plain_text(job_id))
			fallback();
		system_fail("CUSTOM_ENV_CI_JOB_ID: '%s' is not a job id (not run by GitLab Runner?)", job_id);
	}
	if (strlen(job_id) > 64)
		fallback();
	snprintf(handle, sizeof handle, "gitlab-%s", job_id);
}

/* Connect the stage's connection to the daemon (Settings.connect). */
static void connect_daemon(void)
{
	int err = conn_open(&conn, socket_path, line_buf, sizeof line_buf);

	if (cancelled)
		exit_cancelled(false);
	if (err) {
		if (err == ENAMETOOLONG || !plain_path(socket_path))
			fallback();
		system_fail("cannot reach corrald at %s: %s", socket_path, strerror(err));
	}
}

/* ---- config and prepare ----------------------------------------------------- */

static const char *builds_dir = "/builds", *cache_dir = "/cache";

/* STAGE [--builds-dir DIR] [--cache-dir DIR], DIR absolute and printable
 * ASCII with no quote or backslash (JSON and the shell take it as it is);
 * anything else (Python's usage, say) goes to it. */
static void parse_dirs(int argc, char **argv)
{
	int i;

	for (i = 2; i < argc; i += 2) {
		if (i + 1 >= argc || argv[i + 1][0] != '/' || !plain_text(argv[i + 1]) || strchr(argv[i + 1], '"') ||
		    strlen(argv[i + 1]) > 1024)
			fallback();
		if (!strcmp(argv[i], "--builds-dir"))
			builds_dir = argv[i + 1];
		else if (!strcmp(argv[i], "--cache-dir"))
			cache_dir = argv[i + 1];
		else
			fallback();
	}
}

/* Print the custom executor's config JSON, as json.dumps() gives it. */
static int stage_config(void)
{
	struct buf out = { 0 };

	job_handle();
	put_str(&out, "{\"builds_dir\": ");
	put_json(&out, builds_dir, strlen(builds_dir));
	put_str(&out, ", \"cache_dir\": ");
	put_json(&out, cache_dir, strlen(cache_dir));
	put_str(&out, ", \"builds_dir_is_shared\": false, \"hostname\": \"");
	put_str(&out, handle);
	put_str(&out, "\", \"driver\": {\"name\": \"corral\", \"version\": \"" VERSION "\"}, "
		      "\"job_env\": {\"CORRAL_HANDLE\": \"");
	put_str(&out, handle);
	put_str(&out, "\"}, \"shell\": \"sh\"}\n");
	if (cancelled)
		exit_cancelled(false);
	if (write_all(STDOUT_FILENO, out.p, out.len, true) == IO_CANCELLED)
		exit_cancelled(false);
	free(out.p);
	return 0;
}

/* CORRAL_GRACE_TIME (checked by check_number) as Python's repr(float(text))
 * prints it, into OUT; a text whose repr is not plainly its own digits (more
 * than 15 significant ones, or an exponent) goes to the Python driver. */
static void grace_time(char *out, size_t size)
{
	const char *text = getenv("CORRAL_GRACE_TIME"), *frac = "";
	size_t ni, nf, lead = 0;

	if (!text || !*text) {
		snprintf(out, size, "900.0");
		return;
	}
	ni = strspn(text, "0123456789");
	if (text[ni] == '.')
		frac = text + ni + 1;
	nf = strlen(frac);
	while (ni > 1 && text[0] == '0')
		text++, ni--;
	while (nf > 0 && frac[nf - 1] == '0')
		nf--;
	if (ni == 1 && text[0] == '0' && nf > 0) {
		lead = strspn(frac, "0");
		if (lead >= 4)
			fallback(); /* below 1e-4: repr has an exponent */
	}
	if ((ni == 1 && text[0] == '0' ? 0 : ni) + nf - lead > 15)
		fallback();
	if (nf == 0)
		snprintf(out, size, "%.*s.0", (int)ni, text);
	else
		snprintf(out, size, "%.*s.%.*s", (int)ni, text, (int)nf, frac);
}

/* CORRAL_DISK_SIZE_MB (checked by check_number) as int(float(text)): 0 for none. */
static long long disk_size_mb(void)
{
	const char *text = getenv("CORRAL_DISK_SIZE_MB");
	size_t ni;

	if (!text || !*text)
		return 0;
	while (text[0] == '0' && text[1] >= '0' && text[1] <= '9')
		text++;
	ni = strspn(text, "0123456789");
	if (ni > 15)
		fallback();
	return strtoll(text, NULL, 10);
}

/* CORRAL_LIMITS (checked by check_limits) as it goes in the create config:
 * its text, NULL for none or {}; one that is not UTF-8 goes to the Python driver. */
static const char *limits(void)
{
	const char *text = getenv("CORRAL_LIMITS");
	struct cur c;

	if (!text || !*text)
		return NULL;
	if (!valid_utf8((const unsigned char *)text, strlen(text)))
		fallback(); /* Python would send its undecodable bytes as surrogates */
	c.p = text;
	c.end = text + strlen(text);
	if (eat(&c, '{') && eat(&c, '}'))
		return NULL;
	return text;
}

/* The image's root filesystem, as image_directory: "" for no image (the
 * daemon's default), else CORRAL_IMAGES/NAME/TAG (TAG "latest" when none is
 * given) with a bin directory. An image with none is pulled from its registry
 * by the daemon: the Python driver asks for that. */
static void image_rootfs(char *rootfs, size_t size)
{
	const char *image = getenv("CUSTOM_ENV_CI_JOB_IMAGE"), *images = getenv("CORRAL_IMAGES");
	const char *last, *colon, *p, *part;
	char name[1024], bin[PATH_MAX];
	size_t n;
	bool ok = true;
	struct stat st;

	rootfs[0] = '\0';
	if (!image || !*image)
		return;
	if (!images || !*images)
		images = DEFAULT_IMAGES;
	if (!plain_text(image) || strlen(image) >= sizeof name - 8)
		fallback(); /* its repr is not '...' around it */
	for (p = images; *p; p++)
		if (*p < 0x20 || *p > 0x7e)
			fallback();
	if (!plain_path(images))
		fallback();
	/* NAME:TAG when the last path part holds a colon (the last colon of all) */
	last = strrchr(image, '/');
	last = last ? last + 1 : image;
	colon = strchr(last, ':') ? strrchr(image, ':') : NULL;
	n = colon ? (size_t)(colon - image) : strlen(image);
	memcpy(name, image, n);
	name[n] = '\0';
	strcat(name, "/");
	strcat(name, colon && colon[1] ? colon + 1 : "latest");
	/* each part: a letter or digit, then letters, digits, '_', '.', '-' */
	for (part = name; ok; part = p + 1) {
		p = strchrnul(part, '/');
		ok = p > part && (isalnum((unsigned char)*part) != 0);
		for (const char *q = part; ok && q < p; q++)
			ok = isalnum((unsigned char)*q) || *q == '_' || *q == '.' || *q == '-';
		if (!*p)
			break;
	}
	if (!ok)
		fallback(); /* a digest, a registry port: a registry's image */
	if ((size_t)snprintf(rootfs, size, "%s/%s", images, name) >= size ||
	    (size_t)snprintf(bin, sizeof bin, "%s/bin", rootfs) >= sizeof bin)
		fallback();
	if (stat(bin, &st) < 0 || !S_ISDIR(st.st_mode))
		fallback(); /* no directory: a registry's image */
}

/* Python's str.isspace() of the UTF-8 character ending (or starting) at P. */
static size_t space_at(const char *s, size_t n, bool at_end)
{
	static const char *const wide[] = { "\xc2\x85", "\xc2\xa0", "\xe1\x9a\x80", "\xe2\x80\xa8", "\xe2\x80\xa9",
					    "\xe2\x80\xaf", "\xe2\x81\x9f", "\xe3\x80\x80" };
	unsigned char ch = (unsigned char)(at_end ? s[n - 1] : s[0]);
	size_t i, k;

	if (ch == ' ' || (ch >= '\t' && ch <= '\r') || (ch >= 0x1c && ch <= 0x1f))
		return 1;
	for (i = 0; i < sizeof wide / sizeof *wide + 11; i++) {
		char w[4];
		const char *text = w;

		if (i < sizeof wide / sizeof *wide) {
			text = wide[i];
		} else { /* U+2000..U+200A */
			w[0] = '\xe2', w[1] = '\x80', w[2] = (char)(0x80 + (i - sizeof wide / sizeof *wide)), w[3] = '\0';
		}
		k = strlen(text);
		if (n >= k && !memcmp(at_end ? s + n - k : s, text, k))
			return k;
	}
	return 0;
}

/* Create the job's container (replacing one left by an earlier attempt of
 * this prepare) and its builds and cache directories, owned by the job's user. */
static int stage_prepare(void)
{
	char grace[64], rootfs[PATH_MAX], quoted[2200], disk[48] = "";
	const char *lim, *err;
	struct buf req = { 0 };
	struct cur line, c;
	long long mb;
	size_t n, k;

	read_settings();
	lim = limits();
	grace_time(grace, sizeof grace);
	if ((mb = disk_size_mb()))
		snprintf(disk, sizeof disk, ",\"disk_size_mb\":%lld", mb);
	job_handle();
	image_rootfs(rootfs, sizeof rootfs);
	connect_daemon();

	/* the runner retries prepare: this job's own leftover goes */
	put_str(&req, "[\"destroy\",\"");
	put_str(&req, handle);
	put_str(&req, "\"]\n");
	send_request(req.p, req.len);
	next_line(&line);
	open_reply_tolerating(&c, &line, "unknown_handle");

	req.len = 0;
	put_str(&req, "[\"create\",{\"handle\":\"");
	put_str(&req, handle);
	put_str(&req, "\",\"grace_time\":");
	put_str(&req, grace);
	if (*rootfs) {
		put_str(&req, ",\"rootfs\":");
		put_json(&req, rootfs, strlen(rootfs));
	}
	if (lim) {
		put_str(&req, ",\"limits\":");
		put_str(&req, lim);
	}
	put_str(&req, disk);
	put_str(&req, ",\"properties\":{\"executor\":\"gitlab\",\"job_id\":\"");
	put_str(&req, job_id);
	put_str(&req, "\"}}]\n");
	send_request(req.p, req.len);
	next_line(&line);
	open_reply(&c, &line);

	req.len = 0;
	put_str(&req, PROGRAM ": container ");
	put_str(&req, handle);
	put_str(&req, " created\n");
	if (write_all(STDOUT_FILENO, req.p, req.len, true) == IO_CANCELLED)
		exit_cancelled(false);

	snprintf(quoted, sizeof quoted, "'%s' '%s'", builds_dir, cache_dir);
	req.len = 0;
	put_str(&req, "[\"run\",\"");
	put_str(&req, handle);
	put_str(&req, "\",");
	{
		char script[4500];

		snprintf(script, sizeof script, "mkdir -p %s && chown corral:corral %s", quoted, quoted);
		put_json(&req, script, strlen(script));
	}
	put_str(&req, ",{\"privileged\":true}]\n");
	send_request(req.p, req.len);
	free(req.p);
	next_line(&line);
	open_reply(&c, &line);
	/* [STATUS, OUT, ERR] */
	if (!eat(&c, '['))
		malformed(&line);
	if (json_word(&c, "0")) {
		conn_close(&conn);
		return 0;
	}
	if (!skip_value(&c, 0) || !eat(&c, ',') || !json_string(&c, NULL, NULL) || !eat(&c, ','))
		malformed(&line);
	skip_ws(&c);
	err = c.p;
	if (!json_string(&c, (char *)err, &n))
		malformed(&line);
	while (n > 0 && (k = space_at(err, n, false)))
		err += k, n -= k;
	while (n > 0 && (k = space_at(err, n, true)))
		n -= k;
	{
		char prefix[2400];
		struct buf msg = { 0 };

		snprintf(prefix, sizeof prefix, "container %s: cannot make %s: ", handle, quoted);
		put_str(&msg, prefix);
		put(&msg, err, n);
		say_text(msg.p, msg.len);
	}
	exit(system_failure);
}

/* Destroy the job's container; one already gone is not an error. */
static int stage_cleanup(void)
{
	char req[160];
	struct cur line, c;
	int n;

	read_settings();
	job_handle();
	connect_daemon();
	n = snprintf(req, sizeof req, "[\"destroy\",\"%s\"]\n", handle);
	send_request(req, (size_t)n);
	next_line(&line);
	open_reply_tolerating(&c, &line, "unknown_handle");
	conn_close(&conn);
	return 0;
}

/* ---- run --------------------------------------------------------------------- */

/* Run one stage's script in the job's container, streaming its output. */
static int stage_run(void)
{
	struct buf req = { 0 };
	struct cur line, c;
	long long job, status;
	char *script;
	size_t len;

	/* Python's f"run {STAGE}".strip(): a stage name it would print otherwise goes to it */
	if (strlen(stage) > 200 || !plain_text(stage) || (*stage && (stage[0] == ' ' || stage[strlen(stage) - 1] == ' ')))
		fallback();
	if (*stage)
		snprintf(label, sizeof label, "run %s", stage);
	start_stage();
	read_settings();
	job_handle();
	script = read_script(&len);
	in_run = true;
	connect_daemon();

	put_str(&req, "[\"spawn\",\"");
	put_str(&req, handle);
	put_str(&req, "\",");
	put_json(&req, script, len);
	put_str(&req, ",{}]\n");
	send_request(req.p, req.len);
	free(req.p);
	next_line(&line);
	open_reply(&c, &line);
	if (!json_int(&c, &job))
		malformed(&line);

	stream_output(job);
	if (!link_status(job, &status))
		system_fail("container %s: the stage's job has no exit status (the container stopped under it)", handle);
	conn_close(&conn);
	if (status != 0)
		build_failed(status);
	return 0;
}

int main(int argc, char **argv)
{
	const char *command = argc > 1 ? argv[1] : "";

	original_argc = argc;
	original_argv = argv;
	if (!strcmp(command, "run") && argc == 4) {
		script_path = argv[2];
		stage = argv[3];
		return stage_run();
	}
	if (!strcmp(command, "cleanup") && argc == 2) {
		snprintf(label, sizeof label, "cleanup");
		start_stage();
		return stage_cleanup();
	}
	if (!strcmp(command, "config") || !strcmp(command, "prepare")) {
		parse_dirs(argc, argv);
		snprintf(label, sizeof label, "%s", command);
		start_stage();
		return command[0] == 'c' ? stage_config() : stage_prepare();
	}
	fallback(); /* the Python driver's usage or help */
}
