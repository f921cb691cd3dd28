/* bcryptprimitives.dll for Wine 8, which lacks it: Rust's std (1.78 and later) gets its
 * random bytes from ProcessPrng in this DLL, so a Windows binary of bst cannot start under
 * Debian bookworm's wine64 without it. scripts/wine-test builds it with mingw-w64 and puts
 * it next to bst.exe; Windows itself has the real one and never sees this file.
 * ProcessPrng is RtlGenRandom (exported by advapi32 as SystemFunction036), which Wine has. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    /* RtlGenRandom takes a ULONG; SIZE_T is 64-bit here, so feed it in pieces. */
    while (len > 0) {
        ULONG n = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
