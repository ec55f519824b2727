/* The ceiling responder for benches/dnsperf: answers every UDP datagram by
 * sending it back with the QR bit set, batching with recvmmsg/sendmmsg. It
 * parses nothing, so its CPU per query is the kernel's UDP cost, the floor
 * any DNS server on this machine pays. Loopback only: bind address is an
 * argument and the bench passes 127.0.30.2. Written for shieldns. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define BATCH 64
#define SIZE 1500

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s ADDRESS PORT\n", argv[0]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
    if (fd < 0 || inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1 ||
        bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("bind");
        return 1;
    }
    static char buffers[BATCH][SIZE];
    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    struct sockaddr_in peers[BATCH];
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            vectors[i] = (struct iovec){.iov_base = buffers[i], .iov_len = SIZE};
            messages[i].msg_hdr = (struct msghdr){.msg_name = &peers[i], .msg_namelen = sizeof peers[i],
                                                  .msg_iov = &vectors[i], .msg_iovlen = 1};
        }
        int n = recvmmsg(fd, messages, BATCH, MSG_WAITFORONE, NULL);
        if (n <= 0) continue;
        for (int i = 0; i < n; i++) {
            if (messages[i].msg_len > 2) buffers[i][2] |= (char)0x80;
            vectors[i].iov_len = messages[i].msg_len;
        }
        sendmmsg(fd, messages, (unsigned)n, 0);
    }
}
