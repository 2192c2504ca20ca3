namespace Fiddler.Actors.Scheduling;

/// <summary>
/// The PCIe/GPU lane of one layer as a two-stage flow shop: weight copies run one after another on the copy engine,
/// each into a staging slot; the GPU computes one expert at a time (resident experts from t = 0, streamed ones once
/// their weights have arrived); a slot is free again when the GPU has finished the expert in it.
/// </summary>
internal static class GpuLane
{
    /// <summary>
    /// Finish time of the lane. <paramref name="staged"/> are GPU compute times in copy order; the GPU prefers a
    /// streamed expert whose weights are in (it frees a slot for the next copy) and otherwise works on a resident
    /// one, so it idles only when nothing is ready. Timeline outputs are filled when non-empty.
    /// </summary>
    /// <param name="lastTransferMs">The last staged item's copy time when it is a partial expert (NaN: <paramref name="transferMs"/>).</param>
    public static double Simulate(ReadOnlySpan<double> resident, ReadOnlySpan<double> staged, double transferMs, int slots,
        Span<double> residentStart = default, Span<double> copyStart = default, Span<double> stagedComputeStart = default,
        double lastTransferMs = double.NaN)
    {
        int n = staged.Length;
        int k = Math.Min(slots, n);
        // Small spans on the stack: exact search calls this up to 2^16 times per layer, so it must not allocate.
        Span<double> slotFree = k <= 64 ? stackalloc double[k] : new double[k];
        Span<double> arrival = n <= 64 ? stackalloc double[n] : new double[n];
        Span<int> slotOf = n <= 64 ? stackalloc int[n] : new int[n];
        slotFree.Clear();

        double copyFree = 0, gpuFree = 0;
        int nextCopy = 0, nextCompute = 0, nextResident = 0;
        while (nextCompute < n || nextResident < resident.Length)
        {
            // Start every copy whose slot has a known release time (a slot holding an uncomputed expert is +inf).
            while (nextCopy < n)
            {
                int s = 0;
                for (int i = 1; i < k; i++) if (slotFree[i] < slotFree[s]) s = i;
                if (double.IsPositiveInfinity(slotFree[s])) break;
                double start = Math.Max(copyFree, slotFree[s]);
                if (!copyStart.IsEmpty) copyStart[nextCopy] = start;
                arrival[nextCopy] = copyFree = start + (nextCopy == n - 1 && !double.IsNaN(lastTransferMs) ? lastTransferMs : transferMs);
                slotOf[nextCopy] = s;
                slotFree[s] = double.PositiveInfinity;
                nextCopy++;
            }

            // nextCompute < nextCopy whenever streamed work remains: if no slot were occupied, the loop above copied.
            bool stagedReady = nextCompute < nextCopy && arrival[nextCompute] <= gpuFree;
            if (stagedReady || nextResident == resident.Length)
            {
                double start = Math.Max(gpuFree, arrival[nextCompute]);
                if (!stagedComputeStart.IsEmpty) stagedComputeStart[nextCompute] = start;
                gpuFree = start + staged[nextCompute];
                slotFree[slotOf[nextCompute]] = gpuFree;
                nextCompute++;
            }
            else
            {
                if (!residentStart.IsEmpty) residentStart[nextResident] = gpuFree;
                gpuFree += resident[nextResident++];
            }
        }
        return gpuFree;
    }
}
