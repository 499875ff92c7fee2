// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * swap_pressure: writes a known pattern into anonymous memory and reads every
 * page back, for the zswap check of the VM test: run in a memory cgroup
 * smaller than the memory it writes, its pages go out to swap (through
 * zswap) and come back.
 *
 *   swap_pressure MIB
 *
 * The memory is in base pages (MADV_NOHUGEPAGE): the guest kernel gives
 * anonymous memory huge pages by default, and zswap in 6.12 stores no large
 * folio. Each page holds its own number and the index of each run of 32
 * words: compressible (zswap rejects pages that do not compress), never
 * zero-filled (those the swap core keeps without compressing), and no two
 * pages alike. Prints the pages checked and the bad ones; exits with status 1
 * if a page came back wrong.
 *
 * Build (static, for the guest's initramfs):
 *   gcc -static -O2 -Wall -Wextra swap_pressure.c -o swap_pressure
 */
#include <errno.h>
#include <linux/types.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define WORDS_PER_RUN	32

/* The word @word of page @page. */
static __u64 pattern(size_t page, size_t word)
{
	return (__u64)page << 32 | (word / WORDS_PER_RUN + 1);
}

int main(int argc, char **argv)
{
	size_t page_size = (size_t)sysconf(_SC_PAGESIZE);
	size_t words = page_size / sizeof(__u64);
	size_t pages, page, word, bad = 0;
	__u64 *memory;
	char *end;
	long mib;

	mib = argc == 2 ? strtol(argv[1], &end, 10) : 0;
	if (argc != 2 || *end || mib <= 0 || mib > 65536) {
		fprintf(stderr, "usage: %s MIB\n", argv[0]);
		return 2;
	}
	pages = (size_t)mib * 1024 * 1024 / page_size;
	memory = mmap(NULL, pages * page_size, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (memory == MAP_FAILED) {
		fprintf(stderr, "swap_pressure: mmap: %s\n", strerror(errno));
		return 1;
	}
	if (madvise(memory, pages * page_size, MADV_NOHUGEPAGE)) {
		fprintf(stderr, "swap_pressure: madvise: %s\n",
			strerror(errno));
		return 1;
	}
	for (page = 0; page < pages; page++)
		for (word = 0; word < words; word++)
			memory[page * words + word] = pattern(page, word);
	for (page = 0; page < pages; page++) {
		for (word = 0; word < words; word++)
			if (memory[page * words + word] != pattern(page, word))
				break;
		if (word < words && bad++ < 10)
			fprintf(stderr, "swap_pressure: page %zu word %zu: %#llx\n",
				page, word,
				(unsigned long long)memory[page * words + word]);
	}
	printf("swap_pressure: %zu pages written and read back, %zu bad\n",
	       pages, bad);
	return bad ? 1 : 0;
}
