"""Every scenario, and where it sits in a run.

Slot scenarios follow one another after the warm-up (see lab/scenario.py);
long ones start at the onset of the slot named in LONG_AT and last to the
end. The order is fixed so that runs with different seeds compare.
"""

from .api_key_sharing import ApiKeySharing
from .ato_geo import AtoGeo
from .ato_nogeo import AtoNoGeo
from .bola import Bola
from .distributed_burst import DistributedBurst
from .feature_adoption import FeatureAdoption
from .forced_browsing import ForcedBrowsing
from .new_users import NewUsers
from .page_fanout import PageFanout
from .power_user import PowerUser
from .release_shift import ReleaseShift
from .scrape_fast import ScrapeFast
from .scrape_slow import ScrapeSlow
from .session_hijack import SessionHijack
from .slow_ramp import SlowRamp
from .stuffing_few_ips import StuffingFewIps
from .stuffing_many_ips import StuffingManyIps
from .traveller import Traveller

ALL = [AtoGeo, AtoNoGeo, ScrapeFast, ScrapeSlow, StuffingFewIps, StuffingManyIps, DistributedBurst, Bola,
       ApiKeySharing, SlowRamp, SessionHijack, ForcedBrowsing,
       PageFanout, PowerUser, Traveller, FeatureAdoption, ReleaseShift, NewUsers]

SLOTS = ["page_fanout", "ato_geo", "scrape_fast", "stuffing_few_ips", "bola", "ato_nogeo", "distributed_burst",
         "scrape_slow", "api_key_sharing", "stuffing_many_ips", "session_hijack", "forced_browsing"]
# long scenario -> the slot whose onset is its onset
LONG_AT = {"power_user": 0, "new_users": 0, "traveller": 3, "feature_adoption": 2, "slow_ramp": 4,
           "release_shift": 8}
