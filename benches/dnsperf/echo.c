/* The ceiling responder for benches/dnsperf: answers every UDP datagram by
 * sending it back with the QR bit set, batching with recvmmsg/sendmmsg. It
 * parses nothing, so its CPU per query is the kernel's UDP cost, the floor
 * any DNS server on this machine pays. With THREADS > 1 each thread has its
 * own SO_REUSEPORT socket, the layout shieldns and Unbound use with that many
 * workers, so the floor is measured for the same socket layout. Loopback
 * only: bind address is an argument and the bench passes 127.0.30.2.
 * Written for shieldns. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define BATCH 64
#define SIZE 1500

static struct sockaddr_in address;

static void *serve(void *unused) {
    (void)unused;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int on = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0 ||
        bind(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        perror("bind");
        exit(1);
    }
    static __thread char buffers[BATCH][SIZE];
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
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s ADDRESS PORT [THREADS]\n", argv[0]);
        return 2;
    }
    int threads = argc == 4 ? atoi(argv[3]) : 1;
    address = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
    if (threads < 1 || inet_pton(AF_INET, argv[1], &address.sin_addr) != 1) {
        fprintf(stderr, "bad address or thread count\n");
        return 2;
    }
    pthread_t workers[64];
    if (threads > 64) threads = 64;
    for (int i = 1; i < threads; i++) pthread_create(&workers[i], NULL, serve, NULL);
    serve(NULL);
    return 0;
}
