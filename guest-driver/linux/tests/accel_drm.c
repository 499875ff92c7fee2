// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * accel_drm: the accel device node of virtio_accel, tried from userspace
 * (spec/accel-uapi.md): GEM objects created and mmapped, COPY then CRC32C
 * chained by a sync_file (a dependency on the device) and waited for with
 * poll(), CRC32C of pinned user memory waited for through a syncobj, a
 * udmabuf imported as a device object, PRIME export, CRC32C of a 4 MiB GEM
 * object (more pages than max_segments: huge pages or direct buffers), a
 * job held by a foreign fence (vgem's, exported from a vgem dma-buf as a
 * sync_file) until that signals, and the errors that bad requests get.
 * Every result is checked against a computation here. The foreign fence
 * needs the vgem module loaded (modprobe vgem; CONFIG_DRM_VGEM): without
 * its node that check fails.
 *
 * Build (static, for the guest):
 *   gcc -static -O2 -Wall -Wextra -D__user= \
 *       -I guest-driver/linux/include/uapi \
 *       -idirafter <linux-headers>/include/uapi \
 *       -o accel_drm guest-driver/linux/tests/accel_drm.c
 * <drm/drm.h> comes from the kernel's uAPI headers, e.g. those of Debian's
 * linux-headers-*-common package; they are not passed through
 * headers_install, hence -D__user=.
 *
 * Run: accel_drm [DEVICE] (default /dev/accel/accel0). Prints one line per
 * check, "ok N - ..." or "not ok N - ...: why", and exits 0 only if every
 * check passed; 2 if the device cannot be opened or lacks COPY or CRC32C.
 *
 * accel_drm --outlive FLAG [DEVICE]: a job's out sync_file kept after the
 * device node is closed, so that the module can be unloaded meanwhile; once
 * the file FLAG exists, the sync_file is polled and queried
 * (SYNC_IOC_FILE_INFO) and closed, which must work without the module.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <linux/dma-buf.h>
#include <linux/sync_file.h>
#include <linux/types.h>
#include <linux/udmabuf.h>
#include <linux/virtio_accel.h>
#include <drm/drm_mode.h>
#include <drm/vgem_drm.h>
#include <drm/virtio_accel_drm.h>

#define OBJ_SIZE	(64 * 1024)
#define LARGE_SIZE	(4 << 20)
#define WAIT_MS		10000
#define RECORDS		16
/* How long a job waiting for a foreign fence must stay unfinished. */
#define HELD_MS		300

static int dev_fd = -1;
static unsigned int checks;
static unsigned int failures;
static struct drm_vaccel_info info;

/* The results object: one record per slot, mapped. */
static __u32 results_handle;
static struct drm_vaccel_result *records;

static void report(int passed, const char *what, const char *fmt, ...)
{
	va_list ap;

	checks++;
	if (passed) {
		printf("ok %u - %s\n", checks, what);
		return;
	}
	failures++;
	printf("not ok %u - %s: ", checks, what);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
}

/* CRC-32C as spec §8.4 defines it. */
static __u32 crc32c(__u32 seed, const unsigned char *data, size_t len)
{
	__u32 crc = seed ^ 0xffffffffU;
	size_t i;
	int bit;

	for (i = 0; i < len; i++) {
		crc ^= data[i];
		for (bit = 0; bit < 8; bit++)
			crc = (crc & 1) ? (crc >> 1) ^ 0x82f63b78U : crc >> 1;
	}
	return crc ^ 0xffffffffU;
}

static __u32 le32_at(const __u8 *p)
{
	return p[0] | p[1] << 8 | p[2] << 16 | (__u32)p[3] << 24;
}

static void put_le32(__u8 *p, __u32 v)
{
	p[0] = v;
	p[1] = v >> 8;
	p[2] = v >> 16;
	p[3] = v >> 24;
}

static int xioctl(unsigned long request, void *arg)
{
	int ret;

	do {
		ret = ioctl(dev_fd, request, arg);
	} while (ret < 0 && errno == EINTR);
	return ret < 0 ? -errno : 0;
}

/* A new GEM object of @size bytes, mapped at *@map; its handle or 0. */
static __u32 gem_create(__u64 size, void **map)
{
	struct drm_vaccel_gem_create create = { .size = size };
	struct drm_vaccel_gem_info gem = { 0 };
	int err;

	err = xioctl(DRM_IOCTL_VACCEL_GEM_CREATE, &create);
	if (err) {
		report(0, "GEM_CREATE", "%s", strerror(-err));
		return 0;
	}
	gem.handle = create.handle;
	err = xioctl(DRM_IOCTL_VACCEL_GEM_INFO, &gem);
	if (err) {
		report(0, "GEM_INFO", "%s", strerror(-err));
		return 0;
	}
	*map = mmap(NULL, gem.size, PROT_READ | PROT_WRITE, MAP_SHARED,
		    dev_fd, gem.mmap_offset);
	if (*map == MAP_FAILED) {
		report(0, "mmap of a GEM object", "%s", strerror(errno));
		return 0;
	}
	return create.handle;
}

static struct drm_vaccel_buffer gem_buf(__u32 handle, __u64 offset,
					__u64 length)
{
	struct drm_vaccel_buffer buf = {
		.handle = handle, .offset = offset, .length = length,
	};

	return buf;
}

static struct drm_vaccel_buffer user_buf(const void *ptr, __u64 length)
{
	struct drm_vaccel_buffer buf = {
		.length = length, .user_ptr = (__u64)(unsigned long)ptr,
	};

	return buf;
}

/* A SUBMIT of @op on @bufs whose result goes to record @slot. */
static void submit_init(struct drm_vaccel_submit *s, __u32 op,
			struct drm_vaccel_buffer *bufs, __u32 num_in,
			__u32 num_out, unsigned int slot)
{
	memset(s, 0, sizeof(*s));
	s->op = op;
	s->num_in = num_in;
	s->num_out = num_out;
	s->buffers = (__u64)(unsigned long)bufs;
	s->results_handle = results_handle;
	s->results_offset = slot * sizeof(struct drm_vaccel_result);
}

/* Waits for a sync_file with poll(); 0 when it signalled. */
static int wait_sync_file(int fd)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	int ret = poll(&pfd, 1, WAIT_MS);

	if (ret < 0)
		return -errno;
	return ret == 1 && (pfd.revents & POLLIN) ? 0 : -ETIMEDOUT;
}

/* Reads record @slot, which must be finished with status Ok. */
static int record_ok(unsigned int slot, __u64 job_id, const char *what)
{
	struct drm_vaccel_result *rec = &records[slot];
	__u32 status = __atomic_load_n(&rec->status, __ATOMIC_ACQUIRE);

	if (rec->job_id != job_id) {
		report(0, what, "record of job %llu, expected %llu",
		       (unsigned long long)rec->job_id,
		       (unsigned long long)job_id);
		return 0;
	}
	if (status != VIRTIO_ACCEL_S_OK) {
		report(0, what, "status %u, error %d", status, rec->error);
		return 0;
	}
	return 1;
}

/*
 * Record @slot is job @job_id's, finished Ok with the CRC32C (seeded with
 * @seed) of the @len bytes at @data.
 */
static void check_crc_record(unsigned int slot, __u64 job_id, const char *what,
			     __u32 seed, const unsigned char *data, size_t len)
{
	__u32 want, got;

	if (!record_ok(slot, job_id, what))
		return;
	want = crc32c(seed, data, len);
	got = le32_at(records[slot].result);
	report(got == want, what, "%#010x, expected %#010x", got, want);
}

static void check_info(void)
{
	int err = xioctl(DRM_IOCTL_VACCEL_GET_INFO, &info);

	report(!err, "GET_INFO", "%s", strerror(-err));
	if (err)
		exit(2);
	printf("# %u request queues, ops %#x, capabilities %#llx\n",
	       info.num_request_queues, info.ops,
	       (unsigned long long)info.capabilities);
	printf("# max_segments %u, max_buffer_size %llu\n", info.max_segments,
	       (unsigned long long)info.max_buffer_size);
	if (!(info.ops & (1U << VIRTIO_ACCEL_OP_COPY)) ||
	    !(info.ops & (1U << VIRTIO_ACCEL_OP_CRC32C))) {
		report(0, "the device offers COPY and CRC32C", "ops %#x",
		       info.ops);
		exit(2);
	}
}

/*
 * COPY src to dst, then CRC32C of dst after the copy's sync_file (a
 * dependency on the device), then poll() the CRC's sync_file.
 */
static void check_copy_crc(__u32 src, unsigned char *src_map, __u32 dst,
			   unsigned char *dst_map)
{
	struct drm_vaccel_buffer copy_bufs[2], crc_bufs[1];
	struct drm_vaccel_submit copy, crc;
	const __u32 len = OBJ_SIZE - 4096 + 123;
	int err, i;

	for (i = 0; i < OBJ_SIZE; i++)
		src_map[i] = (unsigned char)(i * 7 + i / 251);
	memset(dst_map, 0xee, OBJ_SIZE);

	copy_bufs[0] = gem_buf(src, 0, len);
	copy_bufs[1] = gem_buf(dst, 0, len);
	submit_init(&copy, VIRTIO_ACCEL_OP_COPY, copy_bufs, 1, 1, 0);
	copy.flags = DRM_VACCEL_SUBMIT_OUT_SYNC_FILE;
	err = xioctl(DRM_IOCTL_VACCEL_SUBMIT, &copy);
	report(!err && copy.out_sync_file >= 0, "SUBMIT COPY with an out sync_file",
	       "%s", strerror(-err));
	if (err)
		return;

	crc_bufs[0] = gem_buf(dst, 0, len);
	submit_init(&crc, VIRTIO_ACCEL_OP_CRC32C, crc_bufs, 1, 0, 1);
	crc.flags = DRM_VACCEL_SUBMIT_IN_SYNC_FILE |
		    DRM_VACCEL_SUBMIT_OUT_SYNC_FILE;
	crc.in_sync_file = copy.out_sync_file;
	err = xioctl(DRM_IOCTL_VACCEL_SUBMIT, &crc);
	report(!err, "SUBMIT CRC32C after the COPY's sync_file", "%s",
	       strerror(-err));
	if (err)
		goto close_copy;

	err = wait_sync_file(crc.out_sync_file);
	report(!err, "poll() of the CRC32C's sync_file", "%s", strerror(-err));
	if (!err)
		err = wait_sync_file(copy.out_sync_file);
	if (!err && record_ok(0, copy.job_id, "COPY result")) {
		report(records[0].bytes_written == len &&
		       !memcmp(src_map, dst_map, len) && dst_map[len] == 0xee,
		       "COPY result", "bytes_written %llu, or the copy differs",
		       (unsigned long long)records[0].bytes_written);
	}
	if (!err)
		check_crc_record(1, crc.job_id, "CRC32C result saw the copy", 0,
				 src_map, len);
	close(crc.out_sync_file);
close_copy:
	close(copy.out_sync_file);
}

/* CRC32C, with a seed, of user memory; waited for through a syncobj. */
static void check_user_memory(void)
{
	struct drm_syncobj_create create = { 0 };
	struct drm_syncobj_wait wait = { 0 };
	struct drm_vaccel_buffer bufs[1];
	struct drm_vaccel_submit crc;
	const size_t len = 3 * 4096 + 17;
	unsigned char *data = malloc(len + 5);
	struct timespec now;
	__u32 seed = 0x12345678;
	size_t i;
	int err;

	if (!data) {
		report(0, "user memory", "out of memory");
		return;
	}
	for (i = 0; i < len + 5; i++)
		data[i] = (unsigned char)(i * 13);
	err = xioctl(DRM_IOCTL_SYNCOBJ_CREATE, &create);
	report(!err, "SYNCOBJ_CREATE", "%s", strerror(-err));
	if (err)
		goto out;
	bufs[0] = user_buf(data + 5, len);
	submit_init(&crc, VIRTIO_ACCEL_OP_CRC32C, bufs, 1, 0, 2);
	put_le32(crc.params, seed);
	crc.out_syncobj = create.handle;
	err = xioctl(DRM_IOCTL_VACCEL_SUBMIT, &crc);
	report(!err, "SUBMIT CRC32C of user memory with an out syncobj", "%s",
	       strerror(-err));
	if (err)
		goto out;
	clock_gettime(CLOCK_MONOTONIC, &now);
	wait.handles = (__u64)(unsigned long)&create.handle;
	wait.count_handles = 1;
	wait.timeout_nsec = (now.tv_sec + WAIT_MS / 1000) * 1000000000LL +
			    now.tv_nsec;
	err = xioctl(DRM_IOCTL_SYNCOBJ_WAIT, &wait);
	report(!err, "SYNCOBJ_WAIT", "%s", strerror(-err));
	if (!err)
		check_crc_record(2, crc.job_id, "CRC32C of user memory, seeded",
				 seed, data + 5, len);
out:
	free(data);
}

/* A udmabuf (memfd pages) imported as a device object, then CRC32C of it. */
static void check_udmabuf(void)
{
	const size_t size = 4 * 4096;
	struct udmabuf_create create = { .size = size };
	struct drm_prime_handle prime = { 0 };
	struct drm_vaccel_gem_info gem = { 0 };
	struct drm_vaccel_buffer bufs[1];
	struct drm_vaccel_submit crc;
	int memfd, udmabuf, dmabuf_fd;
	unsigned char *map;
	size_t i;
	int err;

	memfd = memfd_create("accel_drm", MFD_ALLOW_SEALING);
	if (memfd < 0 || ftruncate(memfd, size) ||
	    fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK)) {
		report(0, "memfd for udmabuf", "%s", strerror(errno));
		return;
	}
	map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	if (map == MAP_FAILED) {
		report(0, "mmap of the memfd", "%s", strerror(errno));
		return;
	}
	for (i = 0; i < size; i++)
		map[i] = (unsigned char)(i * 31 + 5);
	udmabuf = open("/dev/udmabuf", O_RDWR | O_CLOEXEC);
	if (udmabuf < 0) {
		report(0, "open /dev/udmabuf (CONFIG_UDMABUF)", "%s",
		       strerror(errno));
		return;
	}
	create.memfd = memfd;
	create.flags = UDMABUF_FLAGS_CLOEXEC;
	dmabuf_fd = ioctl(udmabuf, UDMABUF_CREATE, &create);
	report(dmabuf_fd >= 0, "UDMABUF_CREATE", "%s", strerror(errno));
	if (dmabuf_fd < 0)
		return;
	prime.fd = dmabuf_fd;
	err = xioctl(DRM_IOCTL_PRIME_FD_TO_HANDLE, &prime);
	report(!err, "PRIME_FD_TO_HANDLE of a udmabuf", "%s", strerror(-err));
	if (err)
		return;
	gem.handle = prime.handle;
	err = xioctl(DRM_IOCTL_VACCEL_GEM_INFO, &gem);
	report(!err && (gem.flags & DRM_VACCEL_GEM_IMPORTED) &&
	       (gem.flags & DRM_VACCEL_GEM_REGISTERED) && gem.size == size,
	       "the udmabuf is an imported device object",
	       "err %d, flags %#x, size %llu", err, gem.flags,
	       (unsigned long long)gem.size);

	bufs[0] = gem_buf(prime.handle, 100, size - 200);
	submit_init(&crc, VIRTIO_ACCEL_OP_CRC32C, bufs, 1, 0, 3);
	crc.flags = DRM_VACCEL_SUBMIT_OUT_SYNC_FILE;
	err = xioctl(DRM_IOCTL_VACCEL_SUBMIT, &crc);
	report(!err, "SUBMIT CRC32C of the udmabuf", "%s", strerror(-err));
	if (err)
		return;
	err = wait_sync_file(crc.out_sync_file);
	report(!err, "poll() of its sync_file", "%s", strerror(-err));
	if (!err)
		check_crc_record(3, crc.job_id, "CRC32C of the udmabuf", 0,
				 map + 100, size - 200);
	close(crc.out_sync_file);
	close(dmabuf_fd);
	close(udmabuf);
	munmap(map, size);
	close(memfd);
}

/* The fd of vgem's card node (/dev/dri/cardN), or -1. */
static int open_vgem(void)
{
	char path[32], name[16];
	struct drm_version version;
	int fd, n;

	for (n = 0; n < 16; n++) {
		snprintf(path, sizeof(path), "/dev/dri/card%d", n);
		fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			continue;
		memset(&version, 0, sizeof(version));
		memset(name, 0, sizeof(name));
		version.name = name;
		version.name_len = sizeof(name) - 1;
		if (!ioctl(fd, DRM_IOCTL_VERSION, &version) &&
		    !strcmp(name, "vgem"))
			return fd;
		close(fd);
	}
	return -1;
}

/*
 * A sync_file of a fence of vgem's (a foreign driver's) that is signalled
 * with DRM_IOCTL_VGEM_FENCE_SIGNAL on @vgem, fence *@fence_id; or -1. The
 * fence is attached to a vgem object for writing, and the object's dma-buf
 * exports it (the fences a reader waits for).
 */
static int vgem_fence(int vgem, __u32 *fence_id)
{
	struct drm_mode_create_dumb dumb = {
		.width = 1024, .height = 1, .bpp = 32,
	};
	struct drm_vgem_fence_attach attach = { .flags = VGEM_FENCE_WRITE };
	struct drm_prime_handle prime = { .flags = DRM_CLOEXEC };
	struct dma_buf_export_sync_file export = {
		.flags = DMA_BUF_SYNC_READ, .fd = -1,
	};

	if (ioctl(vgem, DRM_IOCTL_MODE_CREATE_DUMB, &dumb)) {
		report(0, "vgem object", "%s", strerror(errno));
		return -1;
	}
	attach.handle = dumb.handle;
	if (ioctl(vgem, DRM_IOCTL_VGEM_FENCE_ATTACH, &attach)) {
		report(0, "VGEM_FENCE_ATTACH", "%s", strerror(errno));
		return -1;
	}
	*fence_id = attach.out_fence;
	prime.handle = dumb.handle;
	if (ioctl(vgem, DRM_IOCTL_PRIME_HANDLE_TO_FD, &prime)) {
		report(0, "PRIME export of the vgem object", "%s",
		       strerror(errno));
		return -1;
	}
	if (ioctl(prime.fd, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &export))
		report(0, "DMA_BUF_IOCTL_EXPORT_SYNC_FILE", "%s",
		       strerror(errno));
	close(prime.fd);
	return export.fd;
}

/* Whether a sync_file signalled, asked without waiting (SYNC_IOC_FILE_INFO). */
static int sync_file_signalled(int fd)
{
	struct sync_file_info file_info = { 0 };

	return !ioctl(fd, SYNC_IOC_FILE_INFO, &file_info) &&
	       file_info.status == 1;
}

/*
 * CRC32C of @src after a fence of vgem's: the job stays unfinished (its
 * sync_file unsignalled, its record pending) while the fence is
 * pending, and finishes with the right CRC once vgem signals it.
 */
static void check_foreign_fence(__u32 src, const unsigned char *src_map)
{
	struct drm_vgem_fence_signal signal = { 0 };
	struct drm_vaccel_buffer bufs[1] = { gem_buf(src, 0, OBJ_SIZE) };
	struct drm_vaccel_submit crc;
	struct pollfd pfd;
	int vgem, in_fd, err, polled;
	__u32 status;

	vgem = open_vgem();
	report(vgem >= 0, "a vgem node (modprobe vgem)", "none in /dev/dri");
	if (vgem < 0)
		return;
	in_fd = vgem_fence(vgem, &signal.fence);
	if (in_fd < 0)
		goto close_vgem;
	submit_init(&crc, VIRTIO_ACCEL_OP_CRC32C, bufs, 1, 0, 8);
	crc.flags = DRM_VACCEL_SUBMIT_IN_SYNC_FILE |
		    DRM_VACCEL_SUBMIT_OUT_SYNC_FILE;
	crc.in_sync_file = in_fd;
	err = xioctl(DRM_IOCTL_VACCEL_SUBMIT, &crc);
	report(!err, "SUBMIT CRC32C after a vgem fence's sync_file", "%s",
	       strerror(-err));
	if (err)
		goto close_in;
	pfd.fd = crc.out_sync_file;
	pfd.events = POLLIN;
	polled = poll(&pfd, 1, HELD_MS);
	status = __atomic_load_n(&records[8].status, __ATOMIC_ACQUIRE);
	report(polled == 0 && !sync_file_signalled(crc.out_sync_file) &&
	       status == DRM_VACCEL_STATUS_PENDING,
	       "the job waits for the pending vgem fence",
	       "poll() %d, record status %#x", polled, status);
	err = ioctl(vgem, DRM_IOCTL_VGEM_FENCE_SIGNAL, &signal) ? -errno : 0;
	report(!err, "VGEM_FENCE_SIGNAL", "%s", strerror(-err));
	if (!err)
		err = wait_sync_file(crc.out_sync_file);
	report(!err, "poll() of its sync_file after the vgem fence", "%s",
	       strerror(-err));
	if (!err)
		check_crc_record(8, crc.job_id, "CRC32C after the vgem fence", 0,
				 src_map, OBJ_SIZE);
	close(crc.out_sync_file);
close_in:
	close(in_fd);
close_vgem:
	close(vgem);
}

/* CRC32C of @len bytes at @offset of @handle, waited for; record @slot. */
static void crc_of_range(__u32 handle, const unsigned char *map, __u64 offset,
			 __u64 len, unsigned int slot, const char *what)
{
	struct drm_vaccel_buffer bufs[1] = { gem_buf(handle, offset, len) };
	struct drm_vaccel_submit crc;
	int err;

	submit_init(&crc, VIRTIO_ACCEL_OP_CRC32C, bufs, 1, 0, slot);
	crc.flags = DRM_VACCEL_SUBMIT_OUT_SYNC_FILE;
	err = xioctl(DRM_IOCTL_VACCEL_SUBMIT, &crc);
	if (!err) {
		err = wait_sync_file(crc.out_sync_file);
		close(crc.out_sync_file);
	}
	if (err) {
		report(0, what, "%s", strerror(-err));
		return;
	}
	check_crc_record(slot, crc.job_id, what, 0, map + offset, len);
}

/*
 * A 4 MiB GEM object has 1024 pages, far more than max_segments (64 by
 * default): it is a device object only if its pages came in huge runs, and
 * is passed as direct buffers otherwise. Either way CRC32C of all of it and
 * of a range across the 2 MiB boundary must be right.
 */
static void check_large_object(void)
{
	struct drm_vaccel_gem_info gem = { 0 };
	unsigned char *map;
	size_t i;
	int err;

	gem.handle = gem_create(LARGE_SIZE, (void **)&map);
	if (!gem.handle)
		return;
	report(1, "a 4 MiB GEM object created and mapped", "");
	for (i = 0; i < LARGE_SIZE; i++)
		map[i] = (unsigned char)(i * 7 + (i >> 12));
	err = xioctl(DRM_IOCTL_VACCEL_GEM_INFO, &gem);
	report(!err, "GEM_INFO of the 4 MiB object", "%s", strerror(-err));
	printf("# the 4 MiB object is %s\n",
	       gem.flags & DRM_VACCEL_GEM_REGISTERED ?
	       "a device object" : "not a device object (direct buffers)");
	crc_of_range(gem.handle, map, 0, LARGE_SIZE, 6,
		     "CRC32C of a 4 MiB GEM object");
	crc_of_range(gem.handle, map, (2 << 20) - 100, 4096, 7,
		     "CRC32C across the 2 MiB boundary of the object");
	munmap(map, LARGE_SIZE);
}

/* A GEM object exported as a dma-buf comes back as the same handle. */
static void check_prime_export(__u32 handle)
{
	struct drm_prime_handle prime = { .handle = handle,
					  .flags = DRM_CLOEXEC };
	int err = xioctl(DRM_IOCTL_PRIME_HANDLE_TO_FD, &prime);

	report(!err, "PRIME_HANDLE_TO_FD", "%s", strerror(-err));
	if (err)
		return;
	prime.handle = 0;
	err = xioctl(DRM_IOCTL_PRIME_FD_TO_HANDLE, &prime);
	report(!err && prime.handle == handle,
	       "the exported dma-buf imports as the same object",
	       "err %d, handle %u", err, prime.handle);
	close(prime.fd);
}

/* Bad requests: ioctl errors; a device status in the record. */
static void check_errors(__u32 src, __u32 dst)
{
	struct drm_vaccel_buffer bufs[2];
	struct drm_vaccel_submit s;
	int err;

	bufs[0] = gem_buf(src, OBJ_SIZE - 10, 11);
	submit_init(&s, VIRTIO_ACCEL_OP_CRC32C, bufs, 1, 0, 4);
	err = xioctl(DRM_IOCTL_VACCEL_SUBMIT, &s);
	report(err == -EINVAL, "a buffer past its object: EINVAL", "%s",
	       strerror(-err));

	bufs[0] = gem_buf(src, 0, 16);
	submit_init(&s, 0, bufs, 1, 0, 4);
	err = xioctl(DRM_IOCTL_VACCEL_SUBMIT, &s);
	report(err == -EOPNOTSUPP, "operation 0: EOPNOTSUPP", "%s",
	       strerror(-err));

	submit_init(&s, VIRTIO_ACCEL_OP_CRC32C, bufs, 1, 0, 4);
	s.params[63] = 1;	/* a reserved byte */
	s.flags = DRM_VACCEL_SUBMIT_OUT_SYNC_FILE;
	err = xioctl(DRM_IOCTL_VACCEL_SUBMIT, &s);
	if (!err)
		err = wait_sync_file(s.out_sync_file);
	report(!err && records[4].status == VIRTIO_ACCEL_S_INVALID &&
	       records[4].error == -EINVAL,
	       "a reserved parameter byte: status Invalid in the record",
	       "err %d, status %u, error %d", err, records[4].status,
	       records[4].error);
	if (s.out_sync_file >= 0)
		close(s.out_sync_file);

	bufs[0] = gem_buf(src, 0, 4096);
	bufs[1] = gem_buf(dst, 0, 4095);
	submit_init(&s, VIRTIO_ACCEL_OP_COPY, bufs, 1, 1, 5);
	s.flags = DRM_VACCEL_SUBMIT_OUT_SYNC_FILE;
	err = xioctl(DRM_IOCTL_VACCEL_SUBMIT, &s);
	if (!err)
		err = wait_sync_file(s.out_sync_file);
	report(!err && records[5].status == VIRTIO_ACCEL_S_NO_SPACE &&
	       records[5].error == -ENOSPC,
	       "COPY into too small an output: status NoSpace",
	       "err %d, status %u, error %d", err, records[5].status,
	       records[5].error);
	if (s.out_sync_file >= 0)
		close(s.out_sync_file);
}

/*
 * A finished job's sync_file, used after the node is closed and (the
 * caller's script does it) the module unloaded, once @flag exists.
 */
static int check_outlive(const char *flag)
{
	struct sync_fence_info fence_info = { 0 };
	struct sync_file_info file_info = { 0 };
	unsigned char data[4096] = { 1, 2, 3 };
	struct drm_vaccel_buffer bufs[1] = { user_buf(data, sizeof(data)) };
	struct drm_vaccel_submit crc;
	int err, fd;

	submit_init(&crc, VIRTIO_ACCEL_OP_CRC32C, bufs, 1, 0, 0);
	crc.results_handle = 0;
	crc.results_offset = 0;
	crc.flags = DRM_VACCEL_SUBMIT_OUT_SYNC_FILE;
	err = xioctl(DRM_IOCTL_VACCEL_SUBMIT, &crc);
	report(!err, "SUBMIT with an out sync_file to keep", "%s",
	       strerror(-err));
	if (err)
		return 1;
	fd = crc.out_sync_file;
	err = wait_sync_file(fd);
	report(!err, "the kept sync_file signalled", "%s", strerror(-err));
	close(dev_fd);
	printf("# node closed, sync_file kept: waiting for %s\n", flag);
	while (access(flag, F_OK))
		usleep(100000);
	err = wait_sync_file(fd);
	report(!err, "poll() of the sync_file after the module went", "%s",
	       strerror(-err));
	file_info.num_fences = 1;
	file_info.sync_fence_info = (__u64)(unsigned long)&fence_info;
	err = ioctl(fd, SYNC_IOC_FILE_INFO, &file_info) ? -errno : 0;
	report(!err && file_info.status == 1,
	       "SYNC_IOC_FILE_INFO after the module went: signalled",
	       "err %d, status %d", err, file_info.status);
	printf("# its fence: driver \"%s\", timeline \"%s\"\n",
	       fence_info.driver_name, fence_info.obj_name);
	close(fd);
	printf("# %u checks, %u failed\n", checks, failures);
	return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
	const char *flag = NULL;
	const char *path;
	unsigned char *src_map, *dst_map;
	__u32 src, dst;

	if (argc > 2 && !strcmp(argv[1], "--outlive")) {
		flag = argv[2];
		argc -= 2;
		argv += 2;
	}
	path = argc > 1 ? argv[1] : "/dev/accel/accel0";
	setvbuf(stdout, NULL, _IOLBF, 0);
	dev_fd = open(path, O_RDWR | O_CLOEXEC);
	if (dev_fd < 0) {
		printf("not ok 1 - open %s: %s\n", path, strerror(errno));
		return 2;
	}
	check_info();
	if (flag)
		return check_outlive(flag);
	results_handle = gem_create(RECORDS * sizeof(*records),
				    (void **)&records);
	src = gem_create(OBJ_SIZE, (void **)&src_map);
	dst = gem_create(OBJ_SIZE, (void **)&dst_map);
	if (!results_handle || !src || !dst)
		return 1;
	report(1, "three GEM objects created and mapped", "");
	check_copy_crc(src, src_map, dst, dst_map);
	check_user_memory();
	check_udmabuf();
	check_prime_export(src);
	check_foreign_fence(src, src_map);
	check_errors(src, dst);
	check_large_object();
	printf("# %u checks, %u failed\n", checks, failures);
	return failures ? 1 : 0;
}
