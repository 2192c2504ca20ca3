using Fiddler.Actors.Scheduling;
using Fiddler.Kernels.Offload;

namespace Fiddler.Actors.Engine;

/// <summary>Turns Kernels' calibration measurements into the router's latency models.</summary>
public static class HardwareProfiles
{
    public static HardwareProfile FromCalibration(HardwareKey key, CalibrationPoints p)
    {
        LatencyModel Fit(double[] ms) => LatencyModel.Fit(p.Tokens.Zip(ms, (t, m) => (t, m)));
        return new HardwareProfile(key, Fit(p.CpuMs), Fit(p.CpuTorchMs), Fit(p.DeviceMs),
            double.IsFinite(p.TransferMs) ? p.TransferMs : 1e9, Fit(p.RoundTripMs));
    }
}
