/* Tries each call a default seccomp profile blocks and prints "NAME RESULT" per
 * line: 0 if the call succeeded, else its errno. Static: the base rootfs has no libc. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/netlink.h>
#include <linux/perf_event.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void show(const char *name, long rc)
{
	printf("%s %d\n", name, rc < 0 ? errno : 0);
}

/* An audit user message on FD, answered by the kernel's ack: 0 if taken. */
static long audit_user(int fd)
{
	static const char text[] = "corral probe";
	struct {
		struct nlmsghdr h;
		char text[sizeof text];
	} req = { .h = { .nlmsg_len = NLMSG_LENGTH(sizeof text), .nlmsg_type = AUDIT_USER,
			 .nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK } };
	struct {
		struct nlmsghdr h;
		struct nlmsgerr e;
		char more[256];
	} ack;
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	struct timeval two_seconds = { .tv_sec = 2 };

	memcpy(req.text, text, sizeof text);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &two_seconds, sizeof two_seconds) < 0 ||
	    sendto(fd, &req, req.h.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0 ||
	    recv(fd, &ack, sizeof ack, 0) < 0)
		return -1;
	errno = ack.h.nlmsg_type != NLMSG_ERROR ? EPROTO : -ack.e.error;
	return errno ? -1 : 0;
}

/* A clone of the probe: 0 in the child, which exits at once. */
static long clone_exits(long rc)
{
	if (rc == 0)
		_exit(0);
	if (rc > 0)
		waitpid((pid_t)rc, NULL, 0);
	return rc;
}

int main(void)
{
	struct perf_event_attr attr = { .type = PERF_TYPE_SOFTWARE, .size = sizeof attr,
					 .config = PERF_COUNT_SW_CPU_CLOCK, .exclude_kernel = 1,
					 .exclude_hv = 1 };
	struct clone_args args = { .flags = CLONE_NEWUSER, .exit_signal = SIGCHLD };
	char params[120] = { 0 }, handle[16] = { 0 };
	long rc, audit;

	setvbuf(stdout, NULL, _IOLBF, 0);
	show("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0));
	show("add_key", syscall(SYS_add_key, "user", "corral", "x", 1, -2 /* process keyring */));
	show("request_key", syscall(SYS_request_key, "user", "corral", NULL, 0));
	show("io_uring_setup", syscall(SYS_io_uring_setup, 1, params));
	show("perf_event_open", syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0));
	show("bpf", syscall(SYS_bpf, 0 /* BPF_MAP_CREATE */, params, 0));
	show("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
	show("open_by_handle_at", syscall(SYS_open_by_handle_at, AT_FDCWD, handle, O_RDONLY));
	show("chroot", chroot("/"));
	show("audit_socket", audit = socket(AF_NETLINK, SOCK_RAW, NETLINK_AUDIT));
	show("audit_user", audit_user(audit));
	show("clone_newuser", clone_exits(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)));
	show("clone3_newuser", clone_exits(syscall(SYS_clone3, &args, sizeof args)));
	rc = unshare(CLONE_NEWUSER | CLONE_NEWNS);
	show("unshare_newuser", rc);
	/* Inside the new user and mount namespaces when they were made (root there). */
	show("mount", mount("none", "/tmp", "tmpfs", 0, NULL));
	return 0;
}
