namespace Fiddler.Host.Cli;

/// <summary>
/// A command's output file, checked before the work that fills it: a folder given as the file, a missing folder or one
/// this process cannot write in would otherwise fail only after minutes of profiling or calibrating.
/// </summary>
public static class OutputFile
{
    /// <summary>The full path of <paramref name="path"/> once it is known to be writable; throws <see cref="ArgumentException"/>
    /// naming <paramref name="option"/> when it is not.</summary>
    /// <param name="createFolder">Create a missing folder (else a missing folder is an error).</param>
    public static string CheckWritable(string path, string option, bool createFolder = false)
    {
        string full = Path.GetFullPath(path);
        if (Directory.Exists(full)) throw new ArgumentException($"{option}: {full} is a folder: give a file path");
        string folder = Path.GetDirectoryName(full)!;
        try
        {
            if (!Directory.Exists(folder))
            {
                if (!createFolder) throw new ArgumentException($"{option}: the folder {folder} does not exist");
                Directory.CreateDirectory(folder);
            }
            if (File.Exists(full))
                using (new FileStream(full, FileMode.Open, FileAccess.Write)) { } // not truncated: the old file stays until the new one is written
            else
                using (new FileStream(Path.Combine(folder, $".fiddler-write-check-{Environment.ProcessId}"), FileMode.CreateNew, FileAccess.Write,
                    FileShare.None, 1, FileOptions.DeleteOnClose)) { }
        }
        catch (Exception e) when (e is UnauthorizedAccessException or IOException)
        {
            throw new ArgumentException($"{option}: cannot write {full} ({e.Message})", e);
        }
        return full;
    }
}
