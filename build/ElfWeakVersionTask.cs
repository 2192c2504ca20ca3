// Marks one symbol-version requirement of an ELF64 shared library as weak, so the dynamic loader accepts an older
// libstdc++. Why: TorchSharp's libLibTorchSharp.so is built with GCC 13 and asks GLIBCXX_3.4.32 for a single symbol
// (_ZSt21ios_base_library_initv) that <iostream> references and never calls; Debian 12 ships GLIBCXX_3.4.30.
// Patch (verified, see shared/NOTES.md): VER_FLG_WEAK on the version's Vernaux entry in .gnu.version_r, and the
// symbol's .gnu.version entry set to 1 (global). Only ever applied to the copy in a build output, never the NuGet cache.
using System;
using System.IO;
using System.Text;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

public class ElfWeakVersionTask : Task
{
    [Required] public string File { get; set; } = "";
    [Required] public string Version { get; set; } = "";

    public override bool Execute()
    {
        if (!System.IO.File.Exists(File)) return true;
        byte[] b = System.IO.File.ReadAllBytes(File);
        if (b.Length < 64 || b[0] != 0x7f || b[1] != (byte)'E' || b[4] != 2) { Log.LogWarning("not an ELF64 file: " + File); return true; }
        ulong shoff = BitConverter.ToUInt64(b, 0x28);
        int shentsize = BitConverter.ToUInt16(b, 0x3A), shnum = BitConverter.ToUInt16(b, 0x3C);
        int verneed = -1, versym = -1;
        for (int i = 0; i < shnum; i++)
        {
            uint type = BitConverter.ToUInt32(b, (int)shoff + i * shentsize + 4);
            if (type == 0x6ffffffe) verneed = i;
            if (type == 0x6fffffff) versym = i;
        }
        if (verneed < 0 || versym < 0) return true;
        ulong Sh(int i, int off) => BitConverter.ToUInt64(b, (int)shoff + i * shentsize + off);
        uint ShLink(int i) => BitConverter.ToUInt32(b, (int)shoff + i * shentsize + 0x28);
        int dynstr = (int)Sh((int)ShLink(verneed), 0x18);
        string Str(int baseOff, uint o) { int s = baseOff + (int)o, e = s; while (b[e] != 0) e++; return Encoding.ASCII.GetString(b, s, e - s); }

        int vnOff = (int)Sh(verneed, 0x18);
        int versionIndex = -1;
        bool changed = false;
        while (true)
        {
            int cnt = BitConverter.ToUInt16(b, vnOff + 2);
            int aux = vnOff + (int)BitConverter.ToUInt32(b, vnOff + 8);
            for (int k = 0; k < cnt; k++)
            {
                if (Str(dynstr, BitConverter.ToUInt32(b, aux + 8)) == Version)
                {
                    ushort flags = BitConverter.ToUInt16(b, aux + 4);
                    if ((flags & 2) == 0) { BitConverter.GetBytes((ushort)(flags | 2)).CopyTo(b, aux + 4); changed = true; }
                    versionIndex = BitConverter.ToUInt16(b, aux + 6) & 0x7fff;
                }
                aux += (int)BitConverter.ToUInt32(b, aux + 12);
            }
            uint next = BitConverter.ToUInt32(b, vnOff + 12);
            if (next == 0) break;
            vnOff += (int)next;
        }
        if (versionIndex < 0) return true; // library does not need that version: nothing to do

        int vsOff = (int)Sh(versym, 0x18), vsSize = (int)Sh(versym, 0x20);
        for (int s = 0; s < vsSize / 2; s++)
        {
            int at = vsOff + 2 * s;
            if ((BitConverter.ToUInt16(b, at) & 0x7fff) == versionIndex) { BitConverter.GetBytes((ushort)1).CopyTo(b, at); changed = true; }
        }
        if (!changed) return true;
        // Write a new file and move it over the old one, so a hard link into a package cache is never modified.
        string tmp = File + ".patch-tmp";
        System.IO.File.WriteAllBytes(tmp, b);
        System.IO.File.Delete(File);
        System.IO.File.Move(tmp, File);
        Log.LogMessage(MessageImportance.Normal, $"Marked {Version} weak in {File}");
        return true;
    }
}
