/*
 * fuse_hello MOUNTPOINT: mount a FUSE filesystem holding one file, `hello`, and serve
 * it in the background (the kernel's FUSE protocol straight on /dev/fuse, no libfuse:
 * the test rootfs has none). Exits 0 once mounted, or 1 with the failing call on stderr.
 * Built static, bound into test containers (tests/isolation/test_fuse.py).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define CONTENT "hello from FUSE\n"
#define ROOT_ID 1
#define HELLO_ID 2

static int dev;

static void reply(uint64_t unique, int error, const void *body, size_t len)
{
	struct fuse_out_header h = { .len = (uint32_t)(sizeof h + len), .error = -error, .unique = unique };
	struct iovec iov[2] = { { &h, sizeof h }, { (void *)body, len } };

	(void)writev(dev, iov, body ? 2 : 1);
}

static void attr_of(uint64_t node, struct fuse_attr *a)
{
	*a = (struct fuse_attr){ .ino = node, .nlink = 1 };
	if (node == ROOT_ID) {
		a->mode = S_IFDIR | 0755;
		a->nlink = 2;
	} else {
		a->mode = S_IFREG | 0444;
		a->size = sizeof CONTENT - 1;
	}
}

static void serve(void)
{
	static char buf[FUSE_MIN_READ_BUFFER + 65536];

	for (;;) {
		ssize_t n = read(dev, buf, sizeof buf);
		struct fuse_in_header *in = (struct fuse_in_header *)buf;
		void *arg = buf + sizeof *in;

		if (n < 0 && (errno == EINTR || errno == ENOENT))
			continue;
		if (n < (ssize_t)sizeof *in) /* ENODEV: unmounted */
			return;
		switch (in->opcode) {
		case FUSE_INIT: {
			struct fuse_init_in *init = arg;
			struct fuse_init_out out = { .major = FUSE_KERNEL_VERSION,
						     .minor = init->minor < FUSE_KERNEL_MINOR_VERSION ?
								      init->minor :
								      FUSE_KERNEL_MINOR_VERSION,
						     .max_readahead = init->max_readahead,
						     .max_write = 4096 };
			reply(in->unique, 0, &out, sizeof out);
			break;
		}
		case FUSE_LOOKUP: {
			struct fuse_entry_out out = { .nodeid = HELLO_ID, .generation = 1 };

			if (in->nodeid != ROOT_ID || strcmp(arg, "hello")) {
				reply(in->unique, ENOENT, NULL, 0);
				break;
			}
			attr_of(HELLO_ID, &out.attr);
			reply(in->unique, 0, &out, sizeof out);
			break;
		}
		case FUSE_GETATTR: {
			struct fuse_attr_out out = { 0 };

			attr_of(in->nodeid, &out.attr);
			reply(in->unique, 0, &out, sizeof out);
			break;
		}
		case FUSE_OPEN:
		case FUSE_OPENDIR: {
			struct fuse_open_out out = { 0 };

			reply(in->unique, 0, &out, sizeof out);
			break;
		}
		case FUSE_READ: {
			struct fuse_read_in *r = arg;
			size_t len = sizeof CONTENT - 1, off = r->offset < len ? r->offset : len;

			if (in->nodeid != HELLO_ID) { /* a directory lists nothing */
				reply(in->unique, 0, "", 0);
				break;
			}
			len -= off;
			reply(in->unique, 0, CONTENT + off, len < r->size ? len : r->size);
			break;
		}
		case FUSE_READDIR:
			reply(in->unique, 0, "", 0);
			break;
		case FUSE_STATFS: {
			struct fuse_statfs_out out = { .st = { .bsize = 4096, .namelen = 255 } };

			reply(in->unique, 0, &out, sizeof out);
			break;
		}
		case FUSE_ACCESS:
		case FUSE_FLUSH:
		case FUSE_RELEASE:
		case FUSE_RELEASEDIR:
			reply(in->unique, 0, NULL, 0);
			break;
		case FUSE_FORGET:
		case FUSE_BATCH_FORGET:
			break;
		case FUSE_DESTROY:
			reply(in->unique, 0, NULL, 0);
			return;
		default:
			reply(in->unique, ENOSYS, NULL, 0);
		}
	}
}

int main(int argc, char **argv)
{
	char opts[128];
	int null;

	if (argc != 2) {
		fprintf(stderr, "usage: fuse_hello MOUNTPOINT\n");
		return 2;
	}
	if ((dev = open("/dev/fuse", O_RDWR | O_CLOEXEC)) < 0) {
		perror("open /dev/fuse");
		return 1;
	}
	snprintf(opts, sizeof opts, "fd=%d,rootmode=40000,user_id=%u,group_id=%u", dev, getuid(), getgid());
	if (mount("hello", argv[1], "fuse.hello", MS_NOSUID | MS_NODEV, opts) < 0) {
		perror("mount");
		return 1;
	}
	switch (fork()) {
	case -1:
		perror("fork");
		return 1;
	case 0: /* the server, on its own: the job's output ends with its first process */
		setsid();
		if ((null = open("/dev/null", O_RDWR)) >= 0)
			for (int fd = 0; fd < 3; fd++)
				dup2(null, fd);
		serve();
		_exit(0);
	}
	return 0;
}
