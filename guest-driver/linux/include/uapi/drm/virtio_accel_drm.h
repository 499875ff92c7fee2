/* SPDX-License-Identifier: (GPL-2.0 WITH Linux-syscall-note) OR MIT */
/*
 * The accel device node of the virtio accelerator (/dev/accel/accelN).
 *
 * spec/accel-uapi.md documents every ioctl; spec/virtio-accel.md the device
 * underneath (its operations, parameter blocks and status codes, which this
 * interface passes through: include <linux/virtio_accel.h> for them).
 *
 * Besides the ioctls below, the node serves the generic DRM ones:
 * DRM_IOCTL_GEM_CLOSE, DRM_IOCTL_PRIME_HANDLE_TO_FD and
 * DRM_IOCTL_PRIME_FD_TO_HANDLE (dma-buf export and import) and the
 * DRM_IOCTL_SYNCOBJ_* family (binary syncobjs).
 */
#ifndef _UAPI_DRM_VIRTIO_ACCEL_DRM_H
#define _UAPI_DRM_VIRTIO_ACCEL_DRM_H

#include <drm/drm.h>

#if defined(__cplusplus)
extern "C" {
#endif

#define DRM_VACCEL_GET_INFO		0x00
#define DRM_VACCEL_GEM_CREATE		0x01
#define DRM_VACCEL_GEM_INFO		0x02
#define DRM_VACCEL_SUBMIT		0x03

#define DRM_IOCTL_VACCEL_GET_INFO \
	DRM_IOR(DRM_COMMAND_BASE + DRM_VACCEL_GET_INFO, struct drm_vaccel_info)
#define DRM_IOCTL_VACCEL_GEM_CREATE \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_VACCEL_GEM_CREATE, \
		 struct drm_vaccel_gem_create)
#define DRM_IOCTL_VACCEL_GEM_INFO \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_VACCEL_GEM_INFO, \
		 struct drm_vaccel_gem_info)
#define DRM_IOCTL_VACCEL_SUBMIT \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_VACCEL_SUBMIT, struct drm_vaccel_submit)

/**
 * struct drm_vaccel_info - the device's configuration (spec §5)
 * @num_request_queues: request queues the driver uses (queues of SUBMIT)
 * @ops: bit n set: operation n (VIRTIO_ACCEL_OP_*) is supported
 * @max_segments: most descriptors of one request, segments of one object
 * @max_deps: most device dependencies of one request
 * @max_objects: most device objects at a time
 * @max_inflight: most requests in flight per request queue
 * @max_object_size: largest device object, in bytes
 * @max_buffer_size: largest buffer of a request, in bytes
 * @capabilities: bit VIRTIO_ACCEL_F_OBJECTS, bit VIRTIO_ACCEL_F_FENCES: the
 *	capability is enabled (spec §3)
 */
struct drm_vaccel_info {
	__u32 num_request_queues;
	__u32 ops;
	__u32 max_segments;
	__u32 max_deps;
	__u32 max_objects;
	__u32 max_inflight;
	__u64 max_object_size;
	__u64 max_buffer_size;
	__u64 capabilities;
};

/**
 * struct drm_vaccel_gem_create - create a shmem-backed GEM object
 * @size: in: bytes, not zero; out: the object's size (rounded up to pages)
 * @flags: zero
 * @handle: out: the GEM handle
 */
struct drm_vaccel_gem_create {
	__u64 size;
	__u32 flags;
	__u32 handle;
};

/* drm_vaccel_gem_info.flags */
#define DRM_VACCEL_GEM_IMPORTED		0x1U		/* from another driver's dma-buf */
#define DRM_VACCEL_GEM_REGISTERED	0x2U		/* a device object now */

/**
 * struct drm_vaccel_gem_info - what a GEM object is and where to mmap it
 * @handle: in: the GEM handle
 * @flags: out: DRM_VACCEL_GEM_*
 * @size: out: bytes requests may use (an imported dma-buf's own size)
 * @mmap_offset: out: the offset to mmap() the object at on the device node
 */
struct drm_vaccel_gem_info {
	__u32 handle;
	__u32 flags;
	__u64 size;
	__u64 mmap_offset;
};

/**
 * struct drm_vaccel_buffer - one buffer of a request (spec §6.3)
 * @handle: GEM handle, or 0 for user memory at @user_ptr
 * @pad: zero
 * @offset: GEM: offset of the buffer in the object; user memory: zero
 * @length: bytes, at most max_buffer_size; may be 0
 * @user_ptr: user memory: its address; GEM: zero
 */
struct drm_vaccel_buffer {
	__u32 handle;
	__u32 pad;
	__u64 offset;
	__u64 length;
	__u64 user_ptr;
};

/* drm_vaccel_submit.flags */
#define DRM_VACCEL_SUBMIT_IN_SYNC_FILE	0x1U		/* wait for @in_sync_file */
#define DRM_VACCEL_SUBMIT_OUT_SYNC_FILE	0x2U		/* return @out_sync_file */
#define DRM_VACCEL_SUBMIT_QUEUE		0x4U		/* run on request queue @queue */
#define DRM_VACCEL_SUBMIT_FLAGS		(DRM_VACCEL_SUBMIT_IN_SYNC_FILE | \
					 DRM_VACCEL_SUBMIT_OUT_SYNC_FILE | \
					 DRM_VACCEL_SUBMIT_QUEUE)

/* Most syncobj handles in drm_vaccel_submit.in_syncobjs. */
#define DRM_VACCEL_MAX_IN_SYNCOBJS	64

/**
 * struct drm_vaccel_submit - run one operation (spec §6, §8)
 * @op: VIRTIO_ACCEL_OP_*, supported by the device
 * @flags: DRM_VACCEL_SUBMIT_*
 * @params: the operation's parameter block, as the device reads it
 *	(little-endian fields; struct virtio_accel_*_params)
 * @num_in: input buffers: the operation's input count
 * @num_out: output buffers: the operation's output count
 * @buffers: pointer to @num_in + @num_out struct drm_vaccel_buffer, the
 *	inputs then the outputs
 * @in_syncobjs: pointer to @num_in_syncobjs __u32 syncobj handles whose
 *	fences the job waits for
 * @num_in_syncobjs: at most DRM_VACCEL_MAX_IN_SYNCOBJS
 * @in_sync_file: with DRM_VACCEL_SUBMIT_IN_SYNC_FILE: a sync_file fd whose
 *	fences the job waits for
 * @out_syncobj: a syncobj handle that receives the job's fence, or 0
 * @out_sync_file: out, with DRM_VACCEL_SUBMIT_OUT_SYNC_FILE: a new sync_file
 *	fd of the job's fence; -1 otherwise
 * @results_handle: GEM handle of an object of this device (not imported)
 *	that receives the job's struct drm_vaccel_result, or 0
 * @queue: with DRM_VACCEL_SUBMIT_QUEUE: the request queue; else zero
 * @results_offset: offset of the record in @results_handle, a multiple of
 *	64; zero without @results_handle
 * @job_id: out: the job's number, also in its result record
 */
struct drm_vaccel_submit {
	__u32 op;
	__u32 flags;
	__u8 params[64];
	__u32 num_in;
	__u32 num_out;
	__u64 buffers;
	__u64 in_syncobjs;
	__u32 num_in_syncobjs;
	__s32 in_sync_file;
	__u32 out_syncobj;
	__s32 out_sync_file;
	__u32 results_handle;
	__u32 queue;
	__u64 results_offset;
	__u64 job_id;
};

/* drm_vaccel_result.status while the job has not finished */
#define DRM_VACCEL_STATUS_PENDING	0xffffffffU
/* drm_vaccel_result.queue of a job that never reached the device */
#define DRM_VACCEL_NO_QUEUE		0xffffffffU

/**
 * struct drm_vaccel_result - how a job ended, written by the kernel
 * @job_id: the job's number (drm_vaccel_submit.job_id)
 * @status: DRM_VACCEL_STATUS_PENDING, then the device's status
 *	(VIRTIO_ACCEL_S_*, spec §9), written last
 * @error: 0 if @status is VIRTIO_ACCEL_S_OK, else a negative errno
 * @bytes_written: bytes the operation wrote to its output (spec §6.4)
 * @queue: the request queue the job ran on, or DRM_VACCEL_NO_QUEUE
 * @reserved: zero
 * @result: the operation's result (spec §8): CRC, digest, tag, ...
 */
struct drm_vaccel_result {
	__u64 job_id;
	__u32 status;
	__s32 error;
	__u64 bytes_written;
	__u32 queue;
	__u32 reserved;
	__u8 result[32];
};

#if defined(__cplusplus)
}
#endif

#endif /* _UAPI_DRM_VIRTIO_ACCEL_DRM_H */
