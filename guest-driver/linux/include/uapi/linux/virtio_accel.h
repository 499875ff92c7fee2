/* SPDX-License-Identifier: (GPL-2.0 WITH Linux-syscall-note) OR MIT */
/*
 * Wire format of the virtio accelerator device (spec/virtio-accel.md).
 *
 * Every structure is little-endian and packed by construction (each field
 * at its natural alignment); the sizes are checked at compile time by the
 * driver and against the specification's tables by the project's tests.
 */
#ifndef _UAPI_LINUX_VIRTIO_ACCEL_H
#define _UAPI_LINUX_VIRTIO_ACCEL_H

#include <linux/types.h>

/* §2: device ID (provisional) */
#define VIRTIO_ID_ACCEL			63

/* §3: feature bits, which are also the capability bits of CAPABILITIES */
#define VIRTIO_ACCEL_F_OBJECTS		0
#define VIRTIO_ACCEL_F_FENCES		1

/* §4: virtqueues */
#define VIRTIO_ACCEL_CONTROL_QUEUE	0
#define VIRTIO_ACCEL_FIRST_REQUEST_QUEUE 1

/* §5: device configuration */
#define VIRTIO_ACCEL_MAX_REQUEST_QUEUES	64

struct virtio_accel_config {
	__le32 num_request_queues;
	__le32 ops;
	__le32 max_segments;
	__le32 max_deps;
	__le32 max_objects;
	__le32 max_inflight;
	__le64 max_object_size;
	__le64 max_buffer_size;
};

/* §6.1: request header */
#define VIRTIO_ACCEL_PARAMS_SIZE	64

struct virtio_accel_req {
	__le32 op;
	__le16 num_deps;
	__u8 num_in;
	__u8 num_out;
	__u8 reserved[8];
	__u8 params[VIRTIO_ACCEL_PARAMS_SIZE];
};

/* §6.2: a fence, issued to every request taken from a request queue */
struct virtio_accel_fence {
	__le64 seqno;
	__le16 queue;
	__u8 reserved[6];
};

/* §6.3: buffer reference */
#define VIRTIO_ACCEL_DIRECT_HANDLE	0

struct virtio_accel_bufref {
	__le32 handle;
	__le32 reserved;
	__le64 offset;
	__le64 len;
};

/* §6.4: response */
#define VIRTIO_ACCEL_RESULT_SIZE	32

struct virtio_accel_resp {
	__le32 status;
	__le32 reserved;
	struct virtio_accel_fence fence;
	__le64 bytes_written;
	__u8 result[VIRTIO_ACCEL_RESULT_SIZE];
};

/* §7: control queue */
#define VIRTIO_ACCEL_CMD_CAPABILITIES	0x001
#define VIRTIO_ACCEL_CMD_OBJECT_CREATE	0x100
#define VIRTIO_ACCEL_CMD_OBJECT_DESTROY	0x101
#define VIRTIO_ACCEL_CMD_FENCE_QUERY	0x200
#define VIRTIO_ACCEL_CMD_FENCE_WAIT	0x201

struct virtio_accel_ctrl_req {
	__le32 cmd;
	__le32 count;
	__le64 arg;
};

struct virtio_accel_ctrl_resp {
	__le32 status;
	__le32 reserved;
	__le64 value;
};

/* §7.1: a segment of OBJECT_CREATE */
struct virtio_accel_mem_seg {
	__le64 addr;
	__le64 len;
};

/* §8: operations; bit n of the configuration's ops is operation n */
#define VIRTIO_ACCEL_OP_COPY			1
#define VIRTIO_ACCEL_OP_FILL			2
#define VIRTIO_ACCEL_OP_COMPARE			3
#define VIRTIO_ACCEL_OP_CRC32C			4
#define VIRTIO_ACCEL_OP_SHA256			5
#define VIRTIO_ACCEL_OP_AES_GCM_SEAL		6
#define VIRTIO_ACCEL_OP_AES_GCM_OPEN		7
#define VIRTIO_ACCEL_OP_DEFLATE_COMPRESS	8
#define VIRTIO_ACCEL_OP_DEFLATE_DECOMPRESS	9

/* §8.3 */
#define VIRTIO_ACCEL_COMPARE_EQUAL	0xffffffffffffffffULL

/* §8.2 */
struct virtio_accel_fill_params {
	__u8 pattern;
	__u8 reserved[63];
};

/* §8.4 */
struct virtio_accel_crc32c_params {
	__le32 seed;
	__u8 reserved[60];
};

/* §8.6 */
#define VIRTIO_ACCEL_AES_KEY_SIZE	32
#define VIRTIO_ACCEL_GCM_IV_SIZE	12
#define VIRTIO_ACCEL_GCM_TAG_SIZE	16

struct virtio_accel_aes_gcm_params {
	__u8 key[VIRTIO_ACCEL_AES_KEY_SIZE];
	__u8 iv[VIRTIO_ACCEL_GCM_IV_SIZE];
	__u8 reserved[4];
	__u8 tag[VIRTIO_ACCEL_GCM_TAG_SIZE];
};

/* §8.8 */
#define VIRTIO_ACCEL_DEFLATE_RAW	0
#define VIRTIO_ACCEL_DEFLATE_ZLIB	1
#define VIRTIO_ACCEL_DEFLATE_GZIP	2
#define VIRTIO_ACCEL_DEFLATE_MAX_LEVEL	9

struct virtio_accel_deflate_params {
	__u8 format;
	__u8 level;
	__u8 reserved[62];
};

/* §9: status codes */
#define VIRTIO_ACCEL_S_OK		0
#define VIRTIO_ACCEL_S_INVALID		1
#define VIRTIO_ACCEL_S_UNSUPPORTED	2
#define VIRTIO_ACCEL_S_NO_OBJECT	3
#define VIRTIO_ACCEL_S_NO_FENCE		4
#define VIRTIO_ACCEL_S_RANGE		5
#define VIRTIO_ACCEL_S_BAD_ADDRESS	6
#define VIRTIO_ACCEL_S_LIMIT		7
#define VIRTIO_ACCEL_S_NO_SPACE		8
#define VIRTIO_ACCEL_S_BAD_DATA		9
#define VIRTIO_ACCEL_S_AUTH_FAILED	10
#define VIRTIO_ACCEL_S_BUSY		11
#define VIRTIO_ACCEL_S_NO_RESOURCES	12
#define VIRTIO_ACCEL_S_DEVICE_ERROR	13
#define VIRTIO_ACCEL_S_INTERRUPTED	14

#endif /* _UAPI_LINUX_VIRTIO_ACCEL_H */
