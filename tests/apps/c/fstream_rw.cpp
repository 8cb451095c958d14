// std::fstream opened for reading and writing: libstdc++'s filebuf opens
// with fopen and then reads, writes and seeks fileno(f) directly. For a
// pod's file that fd must reach the pod's file.
// Usage: fstream_rw FILE. Used by tests/tests/io_local.rs.
#include <fstream>
#include <iostream>
#include <string>

int main(int argc, char **argv) {
    if (argc != 2) {
        return 2;
    }
    std::fstream f(argv[1], std::ios::in | std::ios::out);
    if (!f) {
        std::cout << "open failed\n";
        return 1;
    }
    std::string first;
    std::getline(f, first);
    std::cout << "first line: " << first << "\n";
    f.clear();
    f.seekp(0, std::ios::end);
    f << "3,7.25\n";
    f.close();
    std::cout << "closed: " << (f.fail() ? "failed" : "ok") << "\n";
    return 0;
}
